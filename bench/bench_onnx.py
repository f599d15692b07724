"""ONNX Runtime against torch: `spinegrade predict` of each real study, cold in a fresh process per backend.

    python bench/bench_onnx.py [--model NAME|RUN (default: the bundled models)] [--repeat 3] [--studies DIR]

For each backend (torch; ONNX Runtime in a process where torch cannot be found: tests/notorch, as in an install
without it) and each study of ../shared/realdata/rsna2024_dicom_train_2studies, the median of --repeat fresh
processes of:
- cold: the process's wall time (interpreter, imports, model loading, reading, grading, writing);
- pipeline: the study's own read + localise + grade time (report.json), and cold / pipeline (target <= 2);
- peak RSS of the process (MiB);
and the largest difference between the backends' probabilities. Set OMP_NUM_THREADS as for use; children run
with bytecode caching on after one untimed run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TWO = REPO.parent / "shared" / "realdata" / "rsna2024_dicom_train_2studies" / "train_images"
# the child: optionally without torch, run the command, report its peak memory
# (the ONNX child starts with tests/notorch first on PYTHONPATH: torch cannot be found, as in an install without it)
NO_TORCH = REPO / "tests" / "notorch"
_CHILD = """
import resource, sys
from spinegrade.cli import main
rc = main(sys.argv[2:])
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "TORCH", "torch" in sys.modules and
      sys.modules["torch"] is not None, file=sys.stderr)
sys.exit(rc)
"""


def run(backend: str, study: Path, out: Path, model: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    hide = [str(NO_TORCH)] if backend == "onnx" else []
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [*hide, str(REPO / "src"), os.environ.get("PYTHONPATH")])),
               SPINEGRADE_BACKEND=backend)
    args = ["predict", str(study), "--out", str(out), "--device", "cpu"] + (["--model", model] if model else [])
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CHILD, backend, *args], check=False, env=env, capture_output=True,
                       text=True)
    cold = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{backend}: predict failed ({p.returncode}):\n{p.stderr[-2000:]}")
    words = p.stderr.split("PEAK_KIB")[-1].split()
    rep = json.loads((out / "report.json").read_text())
    return {"cold": cold, "pipeline": sum(rep["timings"].values()), "peak_mib": int(words[0]) / 1024,
            "torch_imported": words[2] == "True", "submission": (out / "submission.csv").read_text()}


def _probs(csv: str):
    import numpy as np

    return np.array([[float(x) for x in ln.split(",")[1:]] for ln in csv.splitlines()[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--studies", type=Path, default=TWO)
    a = ap.parse_args()
    studies = [p for p in sorted(a.studies.iterdir()) if p.is_dir()]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.1f}; model "
          f"{a.model or 'bundled'}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("torch", "onnx"):  # once untimed: bytecode caches written, files read once
            run(backend, studies[0], Path(tmp) / f"warm-{backend}", a.model)
        subs = {}
        for study in studies:
            for backend in ("torch", "onnx"):
                rs = [run(backend, study, Path(tmp) / f"{study.name}-{backend}-{k}", a.model) for k in range(a.repeat)]
                med = {k: statistics.median(r[k] for r in rs) for k in ("cold", "pipeline", "peak_mib")}
                subs[(study.name, backend)] = rs[0]["submission"]
                print(f"{study.name} {backend:5s}: cold {med['cold']:5.2f} s, pipeline {med['pipeline']:5.2f} s, "
                      f"cold/pipeline {med['cold'] / med['pipeline']:4.2f}, peak {med['peak_mib']:6.0f} MiB, "
                      f"torch imported: {rs[0]['torch_imported']}")
            diff = abs(_probs(subs[(study.name, 'onnx')]) - _probs(subs[(study.name, 'torch')])).max()
            print(f"{study.name}: largest |onnx - torch| probability {diff:.2e}")


if __name__ == "__main__":
    main()
