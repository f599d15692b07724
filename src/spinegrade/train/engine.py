"""The training loop every spinegrade model trains with: a model, two datasets, a task, a LoopConfig.

A *task* says how to call the model on a batch, what the loss is, and how to score the whole validation
set (lower is better; the best epoch is the one with the lowest `task.score_key`). `ClassificationTask`
is the graders' task; a heatmap localiser brings its own. The loop handles devices, mixed precision,
DistributedDataParallel, warm-up + cosine learning rate, early stopping, weight averaging (`LoopConfig.ema`:
validation and `best.pt` use the moving average, `last.pt` holds both), and the run folder: `metrics.jsonl`
(one JSON line per epoch), `curves.png`, `best.pt`, `last.pt` (resumable).

Reproducibility: the torch RNG is re-seeded from (seed, epoch, rank) at the start of every epoch and the
sampler's order comes from (seed, epoch), so a resumed run repeats exactly what an uninterrupted run does,
on every rank, without carrying RNG states in the checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..device import full_float32
from ..errors import DataError
from ..metric import weighted_log_loss
from .checkpoint import BEST, LAST, load_checkpoint, save_checkpoint, versions
from .config import LoopConfig
from .distributed import DistContext, barrier, gather_objects, mean_across, sync_buffers

METRICS = "metrics.jsonl"
CURVES = "curves.png"


class Task(Protocol):
    score_key: str  # the validation figure that picks the best epoch (lower is better)

    def forward(self, model: torch.nn.Module, batch: dict) -> torch.Tensor: ...

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor: ...

    def targets(self, batch: dict) -> torch.Tensor: ...

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]: ...


@dataclass
class ClassificationTask:
    """Severity classification of `{image, cond, label}` batches; label -1 = unlabelled (ignored).

    class_weights (1, 2, 4) make the training loss the challenge's weighted log loss; None is plain
    cross-entropy; label_smoothing spreads that share of each target over the classes. Validation always reports
    the challenge's weighting, on the hard labels.
    """

    class_weights: tuple[float, ...] | None = None
    score_key: str = "val_wll"
    label_smoothing: float = 0.0

    def forward(self, model, batch):
        return model(batch["image"], batch["cond"])

    def loss(self, outputs, batch):
        w = None if self.class_weights is None else torch.tensor(self.class_weights, dtype=torch.float32,
                                                                 device=outputs.device)
        return F.cross_entropy(outputs.float(), batch["label"], weight=w, ignore_index=-1,
                               label_smoothing=self.label_smoothing)

    def targets(self, batch):
        return batch["label"]

    def score(self, outputs, targets):
        from sklearn.metrics import balanced_accuracy_score

        y = targets.numpy()
        p = torch.softmax(outputs.float(), dim=1).numpy()
        keep = y >= 0
        pred = p.argmax(1)
        return {
            "val_wll": weighted_log_loss(y, p),
            "val_log_loss": weighted_log_loss(y, p, weights=(1, 1, 1)),
            "val_acc": float((pred[keep] == y[keep]).mean()) if keep.any() else float("nan"),
            "val_bacc": float(balanced_accuracy_score(y[keep], pred[keep])) if keep.any() else float("nan"),
        }


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    epochs_trained: int  # by this call (0 when a finished run was resumed)
    stopped_early: bool


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _loader(ds, batch_size: int, workers: int, device: torch.device, **kw) -> DataLoader:
    from ..device import loader_workers

    return DataLoader(ds, batch_size=batch_size, num_workers=loader_workers(workers, device),
                      pin_memory=device.type == "cuda", **kw)


def _batches(model, loader, task: Task, device: torch.device, amp: bool) -> Iterator[tuple[torch.Tensor, dict]]:
    with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
        for batch in loader:
            yield task.forward(model, _to(batch, device)).float().cpu(), batch


def predict(model: torch.nn.Module, dataset, task: Task, device: torch.device, batch_size: int = 64,
            workers: int = 0, amp: bool = True) -> torch.Tensor:
    """The model's outputs for every item of `dataset`, in order, on the CPU."""
    model.eval()
    loader = _loader(dataset, batch_size, workers, device, shuffle=False)
    outs = [o for o, _ in _batches(model, loader, task, device, amp and device.type == "cuda")]
    return torch.cat(outs)


def _validate(model, val_ds, task: Task, loop: LoopConfig, ctx: DistContext, amp: bool) -> dict[str, float]:
    """Score the whole validation set; each rank predicts a share and all ranks get the same figures."""
    model.eval()
    share = Subset(val_ds, range(ctx.rank, len(val_ds), ctx.world_size))
    loader = _loader(share, loop.batch_size, loop.workers, ctx.device, shuffle=False)
    outs, tgts = [], []
    for o, batch in _batches(model, loader, task, ctx.device, amp):
        outs.append(o)
        tgts.append(task.targets(batch).cpu())
    parts = gather_objects(ctx, (torch.cat(outs) if outs else None, torch.cat(tgts) if tgts else None))
    parts = [p for p in parts if p[0] is not None]
    return task.score(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run folder's metrics.jsonl (empty if none yet)."""
    p = Path(run_dir) / METRICS
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _keep_metrics_before(run_dir: Path, epoch: int) -> None:
    """Drop records of epochs that will run (again): an interruption may fall between record and last.pt."""
    from ..files import atomic_write_text

    kept = [r for r in read_metrics(run_dir) if r["epoch"] < epoch]
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


class WeightAverage:
    """An exponential moving average of a model's weights and buffers, updated after each optimiser step.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so the average is not
    dominated by the random initial weights in a short run. Integer buffers (batch-norm step counts) are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight-average decay {decay}: expected between 0 and 1")
        self.decay, self.updates = float(decay), 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine = self.module.state_dict()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                mine[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                mine[k].copy_(v)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "state_dict": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["state_dict"])


def _is_better(score: float, best: float) -> bool:
    return math.isfinite(score) and score < best


def fit(model: torch.nn.Module, train_ds, val_ds, task: Task, loop: LoopConfig, run_dir: str | Path,
        ctx: DistContext, describe: dict, resume: bool = False, log=print) -> FitResult:
    """Train `model` on `train_ds`, keep the epoch scoring best on `val_ds`; files go to `run_dir`.

    describe: plain data stored in every checkpoint (model spec for `create_model`, label schema,
    preprocessing, ...). resume: continue from `run_dir/last.pt` if there is one. Datasets may have
    `set_epoch(epoch)` to draw their augmentation per epoch.
    """
    from .. import progress
    from ..plots import plot_curves

    run_dir = Path(run_dir)
    device = ctx.device
    amp = loop.amp and device.type == "cuda"
    if not amp:
        full_float32(device)  # --no-amp: "full precision on GPU" means float32, not TF32
    model.to(device)

    state = {"best": math.inf, "best_epoch": -1, "bad_epochs": 0, "done": False}
    start = 0
    last = load_checkpoint(run_dir, LAST) if resume and (run_dir / LAST).exists() else None
    if last is not None:
        model.load_state_dict(last["state_dict"])
        state = dict(last["early_stop"])
        start = last["epoch"] + 1
        if ctx.is_main:
            log(f"resuming from epoch {start + 1} (last.pt of epoch {start})" if not state["done"]
                else f"run already finished (best epoch {state['best_epoch'] + 1}); nothing to do")
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _keep_metrics_before(run_dir, start)
    # epochs done before this process (resume) or never to run (finished, early stop) end the command sooner
    progress.advance(loop.epochs if state["done"] else start, skipped=True)
    if state["done"]:
        return FitResult(state["best_epoch"], state["best"], 0, False)

    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=loop.seed)
    # A last batch of one sample breaks batch norm; drop the remainder when there is more than one batch.
    drop_last = len(sampler) > loop.batch_size
    train_loader = _loader(train_ds, loop.batch_size, loop.workers, device, sampler=sampler, drop_last=drop_last)
    steps = len(train_loader) * loop.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps, max(1, math.ceil(loop.warmup * steps))))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    average = WeightAverage(model, loop.ema) if loop.ema else None
    if last is not None:
        optimizer.load_state_dict(last["optimizer"])
        scheduler.load_state_dict(last["scheduler"])
        scaler.load_state_dict(last["scaler"])
        if average is not None:
            if "weight_average" not in last:
                raise DataError(f"{run_dir / LAST}: written without a weight average; cannot resume with ema")
            average.load_state_dict(last["weight_average"])
        del last
    kept = model if average is None else average.module  # what is validated and saved as best.pt

    trained = 0
    for epoch in range(start, loop.epochs):
        t0 = time.time()
        torch.manual_seed(_epoch_seed(loop.seed, epoch, ctx.rank))
        sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        net.train()
        total, count = 0.0, 0
        # a bar on a terminal only; in a log the epoch line below says it all
        bar = progress.bar(train_loader, desc=f"epoch {epoch + 1}/{loop.epochs}", leave=False, log=None,
                           disable=not ctx.is_main)
        for batch in bar:
            batch = _to(batch, device)
            with torch.autocast(device.type, enabled=amp):
                loss = task.loss(task.forward(net, batch), batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if average is not None:
                average.update(model)
            n = len(next(iter(batch.values())))
            total += loss.item() * n
            count += n
            bar.set_postfix(loss=f"{total / count:.4f}")
        train_loss = mean_across(ctx, total, count)

        sync_buffers(ctx, model)
        if average is not None:
            sync_buffers(ctx, average.module)
        val = _validate(kept, val_ds, task, loop, ctx, amp)
        score = val[task.score_key]
        # The first epoch always counts as best so that a run has a best.pt even when nothing is scorable.
        improved = _is_better(score, state["best"]) or state["best_epoch"] < 0
        if improved:
            state.update(best=score if math.isfinite(score) else math.inf, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        stop = bool(loop.patience) and state["bad_epochs"] >= loop.patience
        state["done"] = stop or epoch == loop.epochs - 1
        trained += 1
        if stop:  # the epochs it will not run are work the command no longer has
            progress.advance(loop.epochs - epoch - 1, skipped=True)
        eta = progress.advance(1)
        record = {"epoch": epoch, "train_loss": train_loss, **val, "lr": scheduler.get_last_lr()[0],
                  "best": improved, "seconds": round(time.time() - t0, 3)}

        if ctx.is_main:
            with open(run_dir / METRICS, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            plot_curves(read_metrics(run_dir), run_dir / CURVES, task.score_key)
            common = {**describe, "epoch": epoch, "metrics": record, "versions": versions(),
                      "state_dict": kept.state_dict()}
            if improved:
                save_checkpoint(run_dir / BEST, common)
            extra = {} if average is None else {"weight_average": average.state_dict()}
            save_checkpoint(run_dir / LAST, {**common, "state_dict": model.state_dict(), **extra,
                                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                             "scaler": scaler.state_dict(), "early_stop": dict(state)})
            log(f"epoch {epoch + 1}/{loop.epochs}  train_loss {train_loss:.4f}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in val.items()) + ("  *" if improved else "")
                + f"  ({record['seconds']:.1f}s)" + eta)
        barrier(ctx)
        if stop:
            if ctx.is_main:
                log(f"early stop: no better {task.score_key} for {loop.patience} epochs")
            return FitResult(state["best_epoch"], state["best"], trained, True)
    return FitResult(state["best_epoch"], state["best"], trained, False)
