"""Graders stored in int8 (`export.quantize_weights`): folded back to float when loaded, against dequantised on
every call, side by side in one process.

    python bench/bench_int8.py [--model foramina-sagt1-v6] [--batch 30] [--repeat 20]

For each network of the bundled model whose weights are stored as int8, on one thread, the median time of one
batch of crops (the batch a grader reads for two foramina with 15 views) as `runtime.OnnxNet` loads it (the
weights folded to float once, at load) and as a plain ONNX Runtime session runs it (`DequantizeLinear` on every
call), their ratio, and the largest difference between the two outputs (the same weights: float rounding only,
as the folded graph may fuse layers). Set OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_ms(run, repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    import onnx
    import onnxruntime as ort

    from spinegrade.export import WEIGHTS_KEY, input_shapes
    from spinegrade.runtime import OnnxNet
    from spinegrade.slicemodel.bundled import BUNDLED_DIR, default_bundled

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_bundled()["foramina"])
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    rows = []
    for path in sorted((BUNDLED_DIR / a.model).rglob("*.onnx")):
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if WEIGHTS_KEY not in meta:
            continue
        folded = OnnxNet(path, ["CPUExecutionProvider"], 1)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
        plain = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        gen = np.random.default_rng(0)
        xs = [gen.standard_normal((a.batch, *s[1:])).astype(np.float32) for s in input_shapes(folded.description())]
        feed = dict(zip([i.name for i in plain.get_inputs()], xs))
        diff = float(np.abs(folded(*xs) - plain.run(None, feed)[0]).max())
        t_fold = _median_ms(lambda: folded(*xs), a.repeat)
        t_plain = _median_ms(lambda: plain.run(None, feed), a.repeat)
        rows.append((str(path.relative_to(BUNDLED_DIR / a.model)), path.stat().st_size / 1e6, t_fold, t_plain, diff))
    if not rows:
        raise SystemExit(f"{a.model}: no network stored in int8")
    print(f"{a.model}: batch {a.batch}, median of {a.repeat}, one thread")
    print(f"{'network':32s} {'MB':>6s} {'folded ms':>10s} {'per-call ms':>12s} {'ratio':>6s} {'max diff':>9s}")
    for name, mb, tf, tp, d in rows:
        print(f"{name:32s} {mb:6.2f} {tf:10.1f} {tp:12.1f} {tp / tf:6.2f} {d:9.2g}")
    tf, tp = sum(r[2] for r in rows), sum(r[3] for r in rows)
    print(f"{'all':32s} {sum(r[1] for r in rows):6.2f} {tf:10.1f} {tp:12.1f} {tp / tf:6.2f}")


if __name__ == "__main__":
    main()
