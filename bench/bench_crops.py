"""The graders' data loader on one core: milliseconds per item, and loader processes a network needs.

    python bench/bench_crops.py [--studies 6] [--items 600] [--repeat 5] [--network-rate 17000]

Synthesises a small cohort, prepares its cache (memory-mapped, as `train` reads it), and times
`CropDataset[i]` for each condition family, as a training item (with the jitter: shift, slice, rotation, scale,
intensity) and as an inference item (no jitter), in this process on one core. Each figure is the best of
`--repeat` rounds (a shared or virtual machine drifts). It then prints how many loader processes would feed a
network that trains at `--network-rate` crops/s (default: the spinal grader's network alone on an H200, in the
README): the loader processes that together make crops as fast as it uses them.

To compare two versions, run it with each tree first on PYTHONPATH (`PYTHONPATH=OLD/src python
bench/bench_crops.py`), alternating; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def time_items(data, n: int, repeat: int) -> float:
    """Best of `repeat` rounds of seconds per item over `n` items."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(n):
            data[i % len(data)]
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=6)
    ap.add_argument("--items", type=int, default=600, help="items per round and family (default 600)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--network-rate", type=float, default=17000.0, help="crops/s the network trains at")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from spinegrade import vocab
    from spinegrade.data.prepare import Cache, prepare_dataset
    from spinegrade.data.rsna import RsnaDataset
    from spinegrade.data.synth import synthesize_cohort
    from spinegrade.grade.data import CropDataset, training_items
    from spinegrade.grade.spec import default_grader

    tmp = Path(tempfile.mkdtemp(prefix="bench_crops_"))
    try:
        synthesize_cohort(tmp / "cohort", n_studies=a.studies, seed=5)
        prepare_dataset(tmp / "cohort", tmp / "cache", progress=False)
        ds, cache = RsnaDataset(tmp / "cohort"), Cache(tmp / "cache")
        ids = [int(s) for s in cache.study_ids()]
        print(f"{a.studies} synthetic studies, one core, best of {a.repeat} rounds of {a.items} items; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"{'family':<14}{'items':>7}{'training ms':>13}{'inference ms':>14}{'training items/s':>18}"
              f"{'loaders to keep up':>20}")
        for family in vocab.FAMILIES:
            spec = default_grader(family)
            items = training_items(cache, ds, ids, family)
            if not items:
                continue
            train = CropDataset(items, family, spec.crop, spec.jitter, seed=0)
            infer = CropDataset(items, family, spec.crop, None)
            t_train, t_infer = time_items(train, a.items, a.repeat), time_items(infer, a.items, a.repeat)
            per_core = 1 / t_train
            need = a.network_rate / per_core
            print(f"{family:<14}{len(items):>7}{t_train * 1e3:>13.3f}{t_infer * 1e3:>14.3f}{per_core:>18.0f}"
                  f"{need:>20.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
