"""Decoding speed and cache size, measured side by side in one run on the same files.

    python bench/bench_prepare.py [--studies 10] [--repeat 2]

For each data set it times, on the same files:
- a plain single-process pydicom loop (dcmread + pixel_array for every file): the yardstick;
- `prepare --workers 1` and `--workers 2` into fresh caches, and a re-run (which must decode nothing);
- predict's read step (`load_study(stored=True)` on each study folder, as `Predictor.read` does);
and prints each time with its speed against the loop (loop time / its time: above 1 is faster), then the
cache's bytes per study against the study's uncompressed 16-bit pixel bytes (rows x cols x 2 per slice), and
the machine's own ceiling for two workers (two pure-CPU jobs in two processes against both in one).

Runs on the two real studies in ../shared/realdata (skipped with a message when absent) and on a synthetic
cohort written to a temporary folder. Every timing is the best of `--repeat` rounds, each round timing every
contender once in turn (the machine may be shared or drift: the ratios, taken in one run, are what to
compare). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def dicom_files(images: Path) -> list[Path]:
    """Every file of every study (the real studies are symbolic links to their folders: followed here)."""
    return sorted(Path(d) / f for d, _, names in os.walk(images, followlinks=True) for f in names
                  if not f.startswith("."))


def plain_loop(files: list[Path]) -> int:
    """The baseline a newcomer would write: one process, dcmread + pixel_array for every file. Returns the
    uncompressed 16-bit pixel bytes (rows x cols x 2 per frame) of the files it decoded."""
    total = 0
    for f in files:
        try:
            a = pydicom.dcmread(f).pixel_array
        except Exception:  # the baseline, like ours, skips unreadable files
            continue
        total += a.size * 2
    return total


def _busy(n: int) -> int:
    """Pure-Python CPU work (no memory traffic, no I/O): what two cores can at best do twice as fast."""
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def two_process_speedup(repeat: int, n: int = 2_000_000) -> float:
    """How many times faster two worker processes do two equal CPU-bound jobs than one process doing both, pool
    start included, as prepare --workers 2 pays it: the most --workers 2 can gain on this machine."""
    from concurrent.futures import ProcessPoolExecutor

    def two_workers():
        with ProcessPoolExecutor(max_workers=2) as pool:
            list(pool.map(_busy, [n, n]))

    one = min(best(1, lambda: (_busy(n), _busy(n)))[0] for _ in range(repeat))
    two = min(best(1, two_workers)[0] for _ in range(repeat))
    return one / two


def best(repeat: int, fn) -> tuple[float, object]:
    """(best wall time of `repeat` calls, the last call's result)."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def measure(name: str, data: Path, repeat: int) -> dict:
    from spinegrade.data.prepare import prepare_dataset
    from spinegrade.io.dicom import load_study

    images = data / "train_images"
    files = dicom_files(images)
    studies = sorted(p for p in images.iterdir() if p.is_dir())
    for f in files:  # every run below then reads from the page cache, none pays the first disk read
        f.read_bytes()
    row = {"name": name, "studies": len(studies), "files": len(files),
           "largest_study_files": max(len(dicom_files(s)) for s in studies)}
    times: dict[str, list[float]] = {"loop_s": [], "w1_s": [], "w2_s": [], "read_s": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        # interleaved (loop, prepare w1, prepare w2, read; again ...): a machine whose speed drifts (a shared or
        # virtual one) then slows every contender alike, and the best of each is compared
        for k in range(repeat):
            t, row["px16_bytes"] = best(1, lambda: plain_loop(files))
            times["loop_s"].append(t)
            for w in (1, 2):
                cache = tmp / f"w{w}_{k}"
                t = time.perf_counter()
                r = prepare_dataset(data, cache, workers=w, progress=False)
                times[f"w{w}_s"].append(time.perf_counter() - t)
                if r["failed"]:
                    print(f"{name}: prepare failed on {r['failed']}")
            times["read_s"].append(best(1, lambda: [load_study(s, stored=True) for s in studies])[0])
        row.update({k: min(v) for k, v in times.items()})
        cache = tmp / "w2_0"
        row["rerun_s"], r2 = best(1, lambda: prepare_dataset(data, cache, workers=2, progress=False))
        row["rerun_decoded"] = r2["decoded"]
        row["cache_bytes"] = tree_bytes(cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10, help="synthetic studies (default 10)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per timing, best kept (default 2)")
    a = ap.parse_args()
    rows = []
    from conftest import REALDATA, build_real_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        if (REALDATA / "rsna2024_dicom_train_2studies").exists():
            rows.append(measure("real RSNA (2 studies)", build_real_dataset(REALDATA, tmp / "real"), a.repeat))
        else:
            print(f"real data not found at {REALDATA}: skipping the real-study row")
        from spinegrade.data.synth import synthesize_cohort

        synthesize_cohort(tmp / "synth", n_studies=a.studies, seed=11, workers=2)
        rows.append(measure(f"synthetic ({a.studies} studies)", tmp / "synth", a.repeat))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ceiling = two_process_speedup(a.repeat)
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; best of {a.repeat} runs. "
          "Speed = plain loop time / this time (above 1: faster than the loop).")
    print(f"This machine's ceiling for two workers: two processes run two equal pure-CPU jobs {ceiling:.2f}x as "
          "fast as one process runs both (pool start included); prepare --workers 2 can at best be that times "
          "its --workers 1 speed.")
    print(f"{'data':<24}{'files':>6}{'loop s':>8}{'prep w1 s':>10}{'speed':>7}{'prep w2 s':>10}{'speed':>7}"
          f"{'read s':>8}{'speed':>7}{'re-run s':>9}{'decoded':>8}{'MB/study':>9}{'16-bit MB':>10}{'ratio':>7}")
    for r in rows:
        mb = r["cache_bytes"] / r["studies"] / 1e6
        px = r["px16_bytes"] / r["studies"] / 1e6
        print(f"{r['name']:<24}{r['files']:>6}{r['loop_s']:>8.2f}{r['w1_s']:>10.2f}{r['loop_s'] / r['w1_s']:>6.2f}x"
              f"{r['w2_s']:>10.2f}{r['loop_s'] / r['w2_s']:>6.2f}x{r['read_s']:>8.2f}{r['loop_s'] / r['read_s']:>6.2f}x"
              f"{r['rerun_s']:>9.2f}{r['rerun_decoded']:>8}{mb:>9.2f}{px:>10.2f}{mb / px:>6.2f}x")
    print("Targets (issue 12): prepare --workers 2 at least 1.8x the loop on 2 cores; predict's read step no "
          "slower than the loop (speed >= 1); cache at most 1.2x the 16-bit pixel bytes; a re-run decodes 0.")
    print("What --workers 2 can be expected to reach against the loop: its --workers 1 speed x the lower of the "
          "machine's ceiling and the studies' balance (prepare's jobs are whole studies: two workers finish no "
          "sooner than the largest study, so they gain at most all files / its files). An estimate, as noisy as "
          "the figures it is made of:")
    for r in rows:
        balance = r["files"] / r["largest_study_files"]
        w1 = r["loop_s"] / r["w1_s"]
        print(f"  {r['name']}: {w1:.2f}x x min({ceiling:.2f}, {balance:.2f}) = {w1 * min(ceiling, balance):.2f}x "
              f"(measured {r['loop_s'] / r['w2_s']:.2f}x)")


if __name__ == "__main__":
    main()
