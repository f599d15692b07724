"""How the pipeline's costs grow with the number of studies: prepare, cache, training and batch prediction.

For each N in --sizes it takes the first N studies of one synthetic cohort (study i is the same whatever the
cohort's size) and measures
  - prepare: wall seconds of `prepare_dataset(workers=--workers)` into an empty cache, and the cache's bytes
    against the source DICOMs and the 16-bit pixel bytes they hold;
  - training throughput: crops/s of the spinal grader's default network and crop over a DataLoader on that
    cache (as `train` builds it), and the share of each step spent waiting for the loader; the network alone on
    random input (bench_train_throughput's `throughput`) is the ceiling;
  - batch predict: studies/s of `predict` over the N studies with reader processes and without, after the
    models are loaded (their loading, once per batch, is shown apart).
Each figure is then fitted as a + b*N (least squares over the sizes) and extrapolated to the RSNA 2024 training
set (1,975 studies, ~147,000 DICOM files) and its hidden test set (~1,500 studies: an assumption; the
challenge did not publish the number). Synthetic studies are smaller than real ones (fewer, smaller slices),
so per-study figures flatter real data; the table gives files per study for both, and a per-file
extrapolation beside the per-study one. Prints a markdown table.

    nice python bench/scale.py [--sizes 10 40 160] [--workers 2] [--readers N] [--model RUN] [--quick]

Without --model a one-epoch run at the default sizes is trained first (bench_predict's): prediction time does
not depend on how well a model was trained.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RSNA_TRAIN_STUDIES, RSNA_TRAIN_FILES = 1975, 147_000
RSNA_TEST_STUDIES = 1500  # assumed: the hidden test set's size was not published


def _tree_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes) under a folder."""
    n = size = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            n += 1
            size += os.stat(os.path.join(dirpath, f)).st_size
    return n, size


def _pixel_bytes_16bit(cache) -> int:
    """Bytes of the cached series' pixels at 16 bits per pixel (what the DICOMs hold uncompressed)."""
    total = 0
    for sid in cache.study_ids():
        for ser in cache.series_ids(sid):
            total += int(np.prod(cache.meta(sid, ser)["shape"])) * 2
    return total


def _subset(cohort: Path, ids: list[str], folder: Path) -> Path:
    """A folder of exactly these studies for `predict`, its files hard links (no bytes copied)."""
    for s in ids:
        shutil.copytree(cohort / "train_images" / s, folder / s, copy_function=os.link)
    return folder


def measure_prepare(cohort: Path, ids: list[str], cache_dir: Path, workers: int) -> dict:
    from spinegrade.data.prepare import Cache, prepare_dataset

    t = time.perf_counter()
    r = prepare_dataset(cohort, cache_dir, workers=workers, study_ids=[int(s) for s in ids], progress=False)
    secs = time.perf_counter() - t
    if r["failed"]:
        raise RuntimeError(f"prepare failed on {r['failed'][:3]}")
    return {"prepare_s": secs, "cache_bytes": _tree_bytes(cache_dir)[1],
            "pixel_bytes_16": _pixel_bytes_16bit(Cache(cache_dir))}


def measure_training(cohort: Path, ids: list[str], cache_dir: Path, steps: int, batch: int, workers: int,
                     device: str = "cpu") -> dict:
    """crops/s and the loader's share of a step for the spinal grader on the cache, on `device` (on a GPU with
    mixed precision, as `train` runs it; a step's time ends when the GPU has finished it)."""
    import torch
    from torch.utils.data import DataLoader

    from spinegrade import vocab
    from spinegrade.data.prepare import Cache
    from spinegrade.data.rsna import RsnaDataset
    from spinegrade.grade.data import CropDataset, training_items
    from spinegrade.grade.spec import default_grader
    from spinegrade.inputs import COND_DIM
    from spinegrade.models import create_model

    spec = default_grader(vocab.SPINAL)
    ds = RsnaDataset(cohort)
    items = training_items(Cache(cache_dir), ds, [int(s) for s in ids], vocab.SPINAL)
    data = CropDataset(items, vocab.SPINAL, spec.crop, spec.jitter, seed=0)
    torch.manual_seed(0)
    dev = torch.device(device)
    amp = dev.type == "cuda"
    model = create_model(spec.network, spec.in_channels, vocab.N_CLASSES, cond_dim=COND_DIM,
                         **spec.network_kwargs).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    sync = torch.cuda.synchronize if amp else (lambda: None)
    sampler = torch.utils.data.RandomSampler(data, replacement=True, num_samples=batch * (steps + 1))
    loader = DataLoader(data, batch_size=batch, sampler=sampler, num_workers=workers,
                        persistent_workers=False, pin_memory=amp)
    wait = compute = 0.0
    n = 0
    it = iter(loader)
    next(it)  # the first batch pays for starting workers and opening the memory maps
    t0 = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        b = {k: v.to(dev, non_blocking=True) for k, v in next(it).items() if k in ("image", "cond", "label")}
        t1 = time.perf_counter()
        with torch.autocast(dev.type, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(b["image"], b["cond"]).float(), b["label"])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync()
        t2 = time.perf_counter()
        wait, compute, n = wait + t1 - t, compute + t2 - t1, n + len(b["label"])
    wall = time.perf_counter() - t0
    from bench_train_throughput import throughput

    net, _ = throughput(spec.network, spec.crop.out_px, batch, max(2, steps // 2), dev,
                        channels=spec.in_channels, **spec.network_kwargs)
    # crops in one epoch over every family: the labelled points of these studies
    per_epoch = sum(len(training_items(Cache(cache_dir), ds, [int(s) for s in ids], f)) for f in vocab.FAMILIES)
    return {"crops_s": n / wall, "loader_share": wait / (wait + compute), "network_crops_s": net,
            "epoch_crops": per_epoch}


def measure_predict(folder: Path, run: Path, out: Path, readers: int, device: str = "cpu") -> dict:
    from spinegrade.predict import predict

    r = predict(folder, run, out, device=device, readers=readers, log=lambda *_: None)
    shutil.rmtree(out)
    b = r["batch"]
    return {"predict_s": b["seconds"] - b["load_seconds"], "load_s": b["load_seconds"], "graded": r["studies"]}


def fit_line(x: list[float], y: list[float]) -> tuple[float, float]:
    """(a, b) of y = a + b*x by least squares; with one point, a line through the origin."""
    if len(x) < 2:
        return 0.0, y[0] / x[0]
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    if b <= 0:  # noise on a loaded machine can tilt a short fit: fall back to the largest size's rate
        return 0.0, y[-1] / x[-1]
    return float(a), float(b)


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _fmt_b(b: float) -> str:
    return f"{b / 1e6:.1f} MB" if b < 1e9 else f"{b / 1e9:.1f} GB"


def table(rows: list[dict], readers: int, workers: int, loader_workers: int) -> str:
    ns = [r["n"] for r in rows]
    files_per = rows[-1]["files"] / rows[-1]["n"]
    rsna_files_per = RSNA_TRAIN_FILES / RSNA_TRAIN_STUDIES

    def extra(key, target):
        a, b = fit_line(ns, [r[key] for r in rows])
        return a + b * target

    def by_file(key, target):  # per-file cost from the largest size, for RSNA's files per study
        return rows[-1][key] / rows[-1]["files"] * target * rsna_files_per

    head = ["", *[f"N = {n}" for n in ns], f"RSNA train ({RSNA_TRAIN_STUDIES:,}): per study / per file",
            f"RSNA test (~{RSNA_TEST_STUDIES:,}, assumed): per study / per file"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, cells, train="", test=""):
        lines.append("| " + " | ".join([name, *cells, train, test]) + " |")

    row("DICOM files (per study)", [f"{r['files']} ({r['files'] / r['n']:.0f})" for r in rows],
        f"~{RSNA_TRAIN_FILES:,} ({rsna_files_per:.0f})", f"~{RSNA_TEST_STUDIES * rsna_files_per:,.0f}")
    row("source DICOM bytes", [_fmt_b(r["source_bytes"]) for r in rows])
    t, f = extra("prepare_s", RSNA_TRAIN_STUDIES), by_file("prepare_s", RSNA_TRAIN_STUDIES)
    row(f"prepare (workers {workers})", [f"{_fmt_s(r['prepare_s'])} ({r['n'] / r['prepare_s']:.2f} st/s)"
                                         for r in rows], f"{_fmt_s(t)} / {_fmt_s(f)}")
    t, f = extra("cache_bytes", RSNA_TRAIN_STUDIES), by_file("cache_bytes", RSNA_TRAIN_STUDIES)
    row("cache bytes (x 16-bit pixels)", [f"{_fmt_b(r['cache_bytes'])} ({r['cache_bytes'] / r['pixel_bytes_16']:.2f}x)"
                                          for r in rows], f"{_fmt_b(t)} / {_fmt_b(f)}")
    row(f"train crops/s, spinal grader (loader workers {loader_workers})", [f"{r['crops_s']:.0f}" for r in rows])
    row("loader's share of a step", [f"{100 * r['loader_share']:.0f} %" for r in rows])
    row("network alone, crops/s", [f"{r['network_crops_s']:.0f}" for r in rows])
    rate = rows[-1]["crops_s"]
    e = extra("epoch_crops", RSNA_TRAIN_STUDIES)
    row("one epoch, all 3 graders (crops; time)", [f"{r['epoch_crops']} ; {_fmt_s(r['epoch_crops'] / r['crops_s'])}"
                                                  for r in rows], f"{e:,.0f} ; {_fmt_s(e / rate)}")
    for key, name in (("predict0_s", "predict, reading in the main process"),
                      ("predictR_s", f"predict, {readers} reader process(es)")):
        t, f = extra(key, RSNA_TEST_STUDIES), by_file(key, RSNA_TEST_STUDIES)
        row(name, [f"{_fmt_s(r[key])} ({r['n'] / r[key]:.2f} st/s)" for r in rows], "", f"{_fmt_s(t)} / {_fmt_s(f)}")
    row("predict: loading the models (once per batch)", [_fmt_s(r["load_s"]) for r in rows])
    lines.append("")
    lines.append(f"Synthetic studies hold {files_per:.0f} files each, RSNA's ~{rsna_files_per:.0f}: the per-file "
                 f"column scales the largest size's cost per file to RSNA's files; the per-study column fits a + b*N.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 160])
    ap.add_argument("--workers", type=int, default=2, help="prepare processes")
    ap.add_argument("--readers", type=int, default=None, help="predict's reader processes (default: its own)")
    ap.add_argument("--loader-workers", type=int, default=0,
                    help="DataLoader processes (train's automatic default gives 0 on a CPU)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per size")
    ap.add_argument("--batch", type=int, default=64, help="training batch (the grader loop's default)")
    ap.add_argument("--model", type=Path, default=None, help="a trained run for predict (default: train one)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp one)")
    ap.add_argument("--quick", action="store_true", help="sizes 3 6, 3 steps: to try the script")
    ap.add_argument("--device", default="cpu", help="cpu | cuda: where training steps and predict run")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.steps = [3, 6], 3
    sizes = sorted(set(a.sizes))
    from spinegrade.batch import default_readers
    from spinegrade.data.synth import synthesize_cohort

    readers = a.readers if a.readers is not None else default_readers(max(sizes))
    tmp = None if a.keep else tempfile.TemporaryDirectory(prefix="spinegrade-scale-")
    root = Path(a.keep or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    try:
        cohort = root / f"cohort-seed{a.seed}"
        images = cohort / "train_images"
        if not (images.is_dir() and len(list(images.iterdir())) >= max(sizes)):  # a kept one is reused
            t = time.perf_counter()
            synthesize_cohort(cohort, n_studies=max(sizes), seed=a.seed, workers=a.workers)
            print(f"synthesised {max(sizes)} studies in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        all_ids = sorted(p.name for p in images.iterdir())
        run = a.model
        if run is None:
            from bench_predict import _tiny_run

            t = time.perf_counter()
            run = _tiny_run(root / "model")
            print(f"trained a one-epoch run in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        rows = []
        for n in sizes:
            ids = all_ids[:n]
            shutil.rmtree(root / f"studies-{n}", ignore_errors=True)
            shutil.rmtree(root / f"cache-{n}", ignore_errors=True)
            folder = _subset(cohort, ids, root / f"studies-{n}")
            files, source = _tree_bytes(folder)
            r = {"n": n, "files": files, "source_bytes": source}
            r.update(measure_prepare(cohort, ids, root / f"cache-{n}", a.workers))
            r.update(measure_training(cohort, ids, root / f"cache-{n}", a.steps, a.batch, a.loader_workers,
                                      a.device))
            p0 = measure_predict(folder, run, root / "pred", 0, a.device)
            pr = measure_predict(folder, run, root / "pred", readers, a.device)
            r.update(predict0_s=p0["predict_s"], predictR_s=pr["predict_s"], load_s=min(p0["load_s"], pr["load_s"]))
            shutil.rmtree(root / f"cache-{n}")
            rows.append(r)
            print(f"N = {n}: prepare {r['prepare_s']:.1f} s, {r['crops_s']:.0f} crops/s, predict "
                  f"{n / r['predict0_s']:.2f} / {n / r['predictR_s']:.2f} studies/s (0 / {readers} readers)",
                  file=sys.stderr, flush=True)
        print(f"\nMachine: {os.cpu_count()} CPUs (os.cpu_count), torch threads as set by OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; device {a.device}; sizes {', '.join(map(str, sizes))}\n")
        print(table(rows, readers, a.workers, a.loader_workers))
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
