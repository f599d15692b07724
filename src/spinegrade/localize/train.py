"""Train the stage-1 localisers (one heatmap network per view) on the shared training engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import vocab
from .data import VIEW_CHANNELS, HeatmapDataset, view_samples
from .heatmap import decode_heatmaps
from .spec import LocalizerSpec


@dataclass
class HeatmapTask:
    """Engine task: per-pixel logistic loss against Gaussian targets plus a spatial cross-entropy; validation
    error in millimetres.

    The per-pixel loss alone learns "a foramen is here" long before "this foramen is L3/L4": every channel
    lights up on the most foramen-like spot and the error sits at one level's spacing for many epochs (a
    plateau a run may or may not leave in time). The spatial term is a softmax over each landmark channel's
    pixels against its normalised target blob: the right level's pixels compete with every other level's
    from the first step. It is used only where the landmark is on the slice (target peak >= 0.5); the
    per-pixel term still sets the peak heights that pick the slice.
    """

    pos_weight: float = 20.0  # the few bright target pixels would otherwise drown in background
    spatial_weight: float = 0.0
    score_key: str = "val_err_mm"

    def forward(self, model, batch):
        return model(batch["image"])

    def loss(self, outputs, batch):
        t = batch["target"]
        logits = outputs.float()
        per_px = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        loss = (per_px * (1 + self.pos_weight * t)).mean()
        if self.spatial_weight > 0:
            flat_t = t.flatten(2)
            on = flat_t.amax(dim=2) >= 0.5
            if on.any():
                q = flat_t[on] / flat_t[on].sum(dim=1, keepdim=True)
                logp = F.log_softmax(logits.flatten(2)[on], dim=1)
                loss = loss + self.spatial_weight * -(q * logp).sum(dim=1).mean()
        return loss

    def targets(self, batch):
        return torch.cat([batch["points"].flatten(1), batch["mm"]], dim=1)

    def score(self, outputs, targets):
        return heatmap_errors(torch.sigmoid(outputs).numpy(), targets.numpy())


def heatmap_errors(heatmaps: np.ndarray, packed: np.ndarray) -> dict[str, float]:
    """In-plane error (mm) over landmarks whose target lies on the sample's own slice: mean, median, 90th
    percentile, and the share of points nearer another landmark's target than their own (on a sagittal view:
    the wrong level; on an axial one: the wrong side). A mean well above the median means wrong landmarks."""
    n, k = heatmaps.shape[:2]
    pts = packed[:, : k * 3].reshape(n, k, 3)
    mm = packed[:, k * 3:]
    errs, wrong = [], []
    for i in range(n):
        dec = decode_heatmaps(heatmaps[i])
        known = [c for c in range(k) if np.isfinite(pts[i, c, 0])]
        for c in known:
            if pts[i, c, 2] < 0.99:
                continue
            d = {o: float(np.hypot((dec[c, 0] - pts[i, o, 0]) * mm[i, 1], (dec[c, 1] - pts[i, o, 1]) * mm[i, 0]))
                 for o in known}
            errs.append(d[c])
            wrong.append(min(d.values()) < d[c])
    if not errs:
        nan = float("nan")
        return {"val_err_mm": nan, "val_err_median_mm": nan, "val_err_p90_mm": nan, "val_wrong_landmark": nan}
    return {"val_err_mm": float(np.mean(errs)), "val_err_median_mm": float(np.median(errs)),
            "val_err_p90_mm": float(np.percentile(errs, 90)), "val_wrong_landmark": float(np.mean(wrong))}


def template_errors(train: list[dict], val: list[dict]) -> dict[str, float]:
    """The yardstick a localiser must beat: each landmark placed at its mean training position (as a fraction
    of the input), scored on the validation samples like the network (median error in mm)."""
    def on_slice(samples):
        for s in samples:
            for c, (x, y, a) in enumerate(s["points"]):
                if np.isfinite(x) and a >= 0.99:
                    yield s, c, x, y

    sums: dict[int, list[np.ndarray]] = {}
    for s, c, x, y in on_slice(train):
        sums.setdefault(c, []).append(np.array([x, y]) / s["image"].shape[-1])
    tmpl = {c: np.mean(v, axis=0) for c, v in sums.items()}
    errs = [float(np.hypot((tmpl[c][0] * s["image"].shape[-1] - x) * s["mm"][1],
                           (tmpl[c][1] * s["image"].shape[-1] - y) * s["mm"][0]))
            for s, c, x, y in on_slice(val) if c in tmpl]
    return {"template_err_median_mm": float(np.median(errs)) if errs else float("nan")}


def foramen_offsets(cache, coords: pd.DataFrame, study_ids) -> dict[str, dict[str, float]]:
    """Median lateral distance (mm, towards the patient's left) of each foramen from the spinal canal point.

    The localiser uses it to pick the candidate T1 slices for a side before its heatmap refines the choice.
    """
    offs: dict[tuple[str, str], list[float]] = {}
    for sid in study_ids:
        c = coords[coords["study_id"] == int(sid)]
        if c.empty or not cache.has_study(sid):
            continue
        study = cache.load_study(sid)
        canal = {r.level: r for r in c[c["condition"] == vocab.CANAL].itertuples(index=False)}
        for r in c[c["condition"].isin(vocab.FAMILY_CONDITIONS[vocab.FORAMINAL])].itertuples(index=False):
            if r.level not in canal:
                continue
            foramen, canal_point = study.locate_row(r), study.locate_row(canal[r.level])
            if foramen is None or canal_point is None:
                continue
            t1, p_canal, p_foramen = foramen.series, canal_point.patient, foramen.patient
            # measured along the T1 slice normal, signed towards patient left (+x in LPS)
            sign = float(np.sign(t1.geometry.normal[0]) or 1.0)
            d = float((p_foramen - p_canal) @ t1.geometry.normal) * sign
            offs.setdefault((vocab.CONDITION_BY_KEY[r.condition].side, r.level), []).append(d)
    out: dict[str, dict[str, float]] = {}
    for side in vocab.SIDES:
        out[side] = {}
        for lv in vocab.LEVELS:
            v = offs.get((side, lv))
            out[side][lv] = float(np.median(v)) if v else (15.0 if side == "left" else -15.0)
    return out


def train_view(spec: LocalizerSpec, cache, coords: pd.DataFrame, train_ids, val_ids, out_dir: Path, loop, ctx,
               resume: bool = False, log=print, extra: dict | None = None, min_samples_per_epoch: int = 400) -> dict:
    """Train one view's heatmap network as `spec` says into `out_dir` (best.pt, last.pt, metrics.jsonl, curves.png).

    `extra` goes into every checkpoint (the run's plan as `config`, the foramen offsets for sagittal T1).
    """
    from dataclasses import asdict

    from ..models import HEATMAP, create_model, model_kind
    from ..errors import DataError
    from ..train.engine import fit, read_metrics, seed_everything

    view, size = spec.view, spec.input_size
    if model_kind(spec.network) != HEATMAP:
        raise DataError(f"localiser {view}: {spec.network!r} is not a heatmap network (see `spinegrade info`)")
    seed_everything(loop.seed)
    train = view_samples(cache, coords, train_ids, view, training=True, size=size, n_channels=spec.n_channels,
                         slice_sigma=spec.slice_sigma)
    val = view_samples(cache, coords, val_ids, view, training=False, size=size, n_channels=spec.n_channels,
                       slice_sigma=spec.slice_sigma)
    if not train:
        raise ValueError(f"no training samples for the {view} localiser (no coordinates for that view?)")
    # A view with few samples per study (one mid-sagittal T2 slice) would get only a handful of optimiser
    # steps per epoch; repeating its (augmented) samples keeps every view's epoch a similar amount of work.
    train = train * max(1, -(-min_samples_per_epoch // len(train)))
    k = len(VIEW_CHANNELS[view])
    model = create_model(spec.network, spec.n_channels, k, **spec.network_kwargs)
    describe = {
        "kind": "heatmap",
        "model": {"name": spec.network, "in_channels": spec.n_channels, "num_outputs": k,
                  "kwargs": dict(spec.network_kwargs)},
        "view": view,
        "spec": asdict(spec),
        "channels": [list(c) for c in VIEW_CHANNELS[view]],
        "preprocessing": {"input_size": size, "n_channels": spec.n_channels, "intensity": "series 1-99.5 pct"},
        **(extra or {}),
    }
    log(f"localiser {view}: {len(train)} training samples per epoch, {len(val)} validation samples")
    res = fit(model, HeatmapDataset(train, size, augment=spec.augment, seed=loop.seed, sigma=spec.sigma),
              HeatmapDataset(val, size, sigma=spec.sigma), HeatmapTask(spatial_weight=spec.spatial_weight), loop, out_dir, ctx, describe, resume=resume,
              log=log)
    best = next((r for r in read_metrics(out_dir) if r["epoch"] == res.best_epoch), {})
    figures = {k: best[k] for k in ("val_err_median_mm", "val_err_p90_mm", "val_wrong_landmark") if k in best}
    return {"view": view, "best_epoch": res.best_epoch, "val_err_mm": res.best_score, **figures,
            **template_errors(train, val), "n_train": len(train), "n_val": len(val)}
