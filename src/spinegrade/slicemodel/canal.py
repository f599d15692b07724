"""The canal task: real mid-sagittal T2 slices with disc boxes and yes/no canal stenosis boxes (the layout of
the shared `sudirman_sagT2_discs_yolospine`: `images/` + `boxes.csv`, or `images.csv` alone to predict).

Levels are not named in the data. The disc boxes of a slice are merged (a bulge is often drawn over the same
disc as a normal or degenerated box) and counted up from the lowest, the lumbosacral disc: L5/S1, L4/L5, ..
L1/L2; discs above are other discs (thoracic), kept only so that "levels right" can be scored honestly. A
`spinal_stenosis` box belongs to the nearest merged disc. So every level of a slice with at least that many
discs has a disc centre (the localiser's channel 0-4) and a yes/no label (stenosis box or none); the canal
point (channel 5-9) is the stenosis box's centre, known only where one is drawn: it is learned there and
nowhere else. The grader reads a crop centred on the disc, wide enough to hold the canal behind it.

The yes/no finding is the annotators' of another cohort, about a third of lumbar levels: not an RSNA
severity. What it may say about the three-class grade is decided in `predict`, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import vocab
from ..errors import DataError
from .data import PointSlices, error_summary
from .task import SliceTask

if TYPE_CHECKING:
    import pandas as pd

BOXES_CSV = "boxes.csv"
IMAGES_CSV = "images.csv"
BOX_COLUMNS = ("path", "patient_id", "label", "x_center", "y_center", "width", "height")
IMAGE_COLUMNS = ("path", "patient_id")
DISC_LABELS = ("normal_disc", "degenerative_disc", "lumbar_disc_bulge", "thoracic_disc_bulge")
CORE_DISC_LABELS = ("normal_disc", "degenerative_disc")  # their centre is the disc's; a bulge box reaches beyond
STENOSIS = "spinal_stenosis"
N = len(vocab.LEVELS)
DISC_CHANNELS = tuple(f"disc_{lv}" for lv in vocab.LEVELS)
CANAL_CHANNELS = tuple(f"canal_{lv}" for lv in vocab.LEVELS)
OTHER_DISC = -1  # a landmark channel never learned: a disc above L1/L2
DISC_PEAK_SHARE = 0.5  # a disc peak is at least this share of the median of the levels' own peaks
SPINE_BAND_PX = 6  # ... and this near (heatmap px) the line through them
# Below L5/S1 a disc peak closer to the one above than this share of the median gap between the peaks above it is
# the rudimentary S1/S2 disc of the sacrum (its segments are shorter than a lumbar level), not L5/S1.
SACRAL_GAP_SHARE = 0.75
# The training slices' field of view: 384 px at about 0.8 mm (their README's estimate: 300-320 mm, resampled to
# 384 px; the spacing is not given per slice). A DICOM slice is set on a canvas this wide before the model sees it.
TRAINING_FOV_MM = 307.0


def merge_discs(boxes: list[tuple[str, float, float, float, float]]) -> list[tuple[float, float]]:
    """Disc centres (x, y) of one slice, top to bottom, from its disc boxes (label, x, y, w, h).

    Two boxes are one disc when the centre of the smaller lies inside the larger. A disc's centre is the mean
    of its normal/degenerated boxes' centres, or of its bulge boxes' where it has only those.
    """
    order = sorted(boxes, key=lambda b: -b[3] * b[4])  # the largest first: each cluster grows around it
    clusters: list[list] = []
    for b in order:
        for c in clusters:
            big = c[0]
            if abs(b[1] - big[1]) <= big[3] / 2 and abs(b[2] - big[2]) <= big[4] / 2:
                c.append(b)
                break
        else:
            clusters.append([b])
    out = []
    for c in clusters:
        core = [b for b in c if b[0] in CORE_DISC_LABELS] or c
        out.append((float(np.mean([b[1] for b in core])), float(np.mean([b[2] for b in core]))))
    return sorted(out, key=lambda p: p[1])


def slice_truth(boxes: pd.DataFrame) -> tuple[dict, dict, list]:
    """For one slice's boxes: {level: disc (x, y)}, {level: stenosis box centre (x, y) or None}, other discs."""
    discs = merge_discs([(r.label, r.x_center, r.y_center, r.width, r.height)
                         for r in boxes.itertuples(index=False) if r.label in DISC_LABELS])
    lumbar = discs[::-1][:N]  # from the lowest up: L5/S1 first
    level_disc = {vocab.LEVELS[N - 1 - i]: d for i, d in enumerate(lumbar)}
    others = discs[: max(0, len(discs) - N)]
    canal: dict = {lv: None for lv in level_disc}
    if discs:
        arr = np.asarray(discs)
        for r in boxes.itertuples(index=False):
            if r.label != STENOSIS:
                continue
            k = int(np.argmin(np.hypot(arr[:, 0] - r.x_center, arr[:, 1] - r.y_center)))
            near = tuple(arr[k])
            for lv, d in level_disc.items():
                if d == near:
                    canal[lv] = (float(r.x_center), float(r.y_center))
    return level_disc, canal, others


def _number(table: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    """A column of finite numbers >= 0; DataError naming the file, line and value otherwise."""
    out = np.zeros(len(table))
    for i, v in enumerate(table[col]):
        try:
            out[i] = float(v)
        except ValueError:
            out[i] = np.nan
        if not np.isfinite(out[i]) or out[i] < 0:
            raise DataError(f"{path}: line {i + 2}: {col} {v!r}: must be a finite number >= 0")
    return out


def read_canal_slices(folder: str | Path, check_files: bool = True) -> PointSlices:
    """A Sagittal T2 folder as a slice set: five rows per image (every level, truth where the boxes give it).

    `boxes.csv` gives the images and the truth; without it `images.csv` (path, patient_id) lists the images
    to predict. DataError naming the file and line on any problem.
    """
    import pandas as pd

    from ..data.slices import read_string_table

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected images/ and {BOXES_CSV} or {IMAGES_CSV})")
    bp, ip = root / BOXES_CSV, root / IMAGES_CSV
    if bp.is_file():
        boxes = read_string_table(bp, BOX_COLUMNS)
        for c in ("x_center", "y_center", "width", "height"):
            boxes[c] = _number(boxes, c, bp)
        images = boxes.drop_duplicates("path")[["path", "patient_id"]]
        study_of = dict(zip(images["path"], images["patient_id"]))
        for i, (p, s) in enumerate(zip(boxes["path"], boxes["patient_id"])):
            if study_of[p] != s:
                raise DataError(f"{bp}: line {i + 2}: patient_id {s} differs from the {study_of[p]} given for {p}")
    elif ip.is_file():
        boxes = None
        images = read_string_table(ip, IMAGE_COLUMNS)
        dup = images["path"].duplicated()
        if dup.any():
            i = int(np.flatnonzero(dup.to_numpy())[0])
            raise DataError(f"{ip}: line {i + 2}: path {images['path'].iloc[i]!r} listed twice")
    else:
        raise DataError(f"{root}: neither {BOXES_CSV} nor {IMAGES_CSV} (a Sagittal T2 folder lists its images in one)")
    images = images.sort_values("path", kind="stable").reset_index(drop=True)
    sizes = []
    for p in images["path"]:
        f = root / p
        if not f.is_file():
            if check_files:
                raise DataError(f"{f}: image file missing (listed in {bp.name if boxes is not None else ip.name})")
            sizes.append((0, 0))
            continue
        sizes.append(_image_size(f))
    slices = pd.DataFrame({"path": images["path"], "study_id": images["patient_id"].astype(str),
                           "rows": [s[0] for s in sizes], "cols": [s[1] for s in sizes]})
    by_path = boxes.groupby("path", sort=False) if boxes is not None else None
    pts, lms = [], []
    for p, study in zip(slices["path"], slices["study_id"]):
        level_disc, canal, others = slice_truth(by_path.get_group(p)) if by_path is not None else ({}, {}, [])
        for li, lv in enumerate(vocab.LEVELS):
            d = level_disc.get(lv)
            row = {"path": p, "study_id": study, "condition": vocab.CANAL, "level": lv}
            if boxes is not None:
                row.update(label=-1 if d is None else int(canal[lv] is not None),
                           x=np.nan if d is None else d[0], y=np.nan if d is None else d[1])
            pts.append(row)
            if d is not None:
                lms.append({"path": p, "channel": li, "x": d[0], "y": d[1]})
            if canal.get(lv) is not None:
                lms.append({"path": p, "channel": N + li, "x": canal[lv][0], "y": canal[lv][1]})
        lms += [{"path": p, "channel": OTHER_DISC, "x": x, "y": y} for x, y in others]
    points = pd.DataFrame(pts)
    landmarks = pd.DataFrame(lms, columns=["path", "channel", "x", "y"]) if boxes is not None else None
    truth = boxes is not None
    return PointSlices(root, slices, points, truth, truth, landmarks)


def _peaks(h: np.ndarray, floor: float) -> list[tuple[int, int]]:
    """Local maxima (x, y) of a heatmap at or above `floor`, top to bottom, one per disc: two maxima closer than
    half the median gap between neighbours are one disc (a vertebral body lies between two discs), the
    higher kept."""
    from numpy.lib.stride_tricks import sliding_window_view

    # each pixel's 5 x 5 neighbourhood maximum (numpy: predicting imports no scipy)
    around = sliding_window_view(np.pad(h, 2, constant_values=-np.inf), (5, 5)).max(axis=(-2, -1))
    m = (h == around) & (h >= floor)
    ys, xs = np.nonzero(m)
    peaks = sorted(zip(xs.tolist(), ys.tolist()), key=lambda p: p[1])
    if len(peaks) < 3:
        return peaks
    gap = float(np.median(np.diff([y for _, y in peaks])))
    out = [peaks[0]]
    for p in peaks[1:]:
        q = out[-1]
        if np.hypot(p[0] - q[0], p[1] - q[1]) < gap / 2:
            if h[p[1], p[0]] > h[q[1], q[0]]:
                out[-1] = p
        else:
            out.append(p)
    return out


def decode_levels(hm: np.ndarray) -> np.ndarray:
    """(10, 3) disc and canal points (x, y, height; heatmap pixels) read together from (10, H, W) heatmaps.

    Each level's disc is its own channel's peak while the five lie in order, top to bottom, with no other disc
    between them. Otherwise (a channel has taken the disc above its own, as another scanner's contrast makes
    some do) the discs are counted up from the lowest, the rule the labels were made with: the lowest five peaks
    of the five disc channels together are L5/S1 .. L1/L2 (a disc peak: at least half as high as the levels'
    own peaks, on the spine, i.e. near the line through them). Each canal point is the highest canal response
    level with its disc and up to 12 heatmap pixels behind it. Where fewer than five disc peaks stand out, each
    channel is read alone.
    """
    from ..localize.heatmap import decode_heatmaps, refine_peak

    own = decode_heatmaps(hm)
    disc, canal = hm[:N].max(axis=0), hm[N:].max(axis=0)
    # a disc peak: as high as half the levels' own peaks, on the spine (near the line through them)
    a, b = np.polyfit(own[:N, 1], own[:N, 0], 1)
    floor = DISC_PEAK_SHARE * float(np.median(own[:N, 2]))
    peaks = [p for p in _peaks(disc, floor) if abs(p[0] - (a * p[1] + b)) <= SPINE_BAND_PX]
    if len(peaks) < N:
        return own
    gaps = np.diff([p[1] for p in peaks])
    if len(peaks) > N and gaps[-1] < SACRAL_GAP_SHARE * float(np.median(gaps[:-1])):
        peaks = peaks[:-1]  # the lowest is a sacral segment's disc (S1/S2), closer to L5/S1 than a lumbar level
    ys = own[:N, 1]
    claimed = [(int(round(x)), int(round(y))) for x, y in own[:N, :2]]
    between = [p for p in peaks if ys[0] < p[1] < ys[-1] and min(abs(p[0] - cx) + abs(p[1] - cy)
                                                                  for cx, cy in claimed) > 2]
    ordered = bool(np.all(np.diff(ys) > 2)) and not between
    chosen = claimed if ordered else peaks[-N:]
    out = np.zeros((2 * N, 3))
    h, w = disc.shape
    for li, (px, py) in enumerate(chosen):
        out[li] = own[li] if ordered else refine_peak(disc, px, py)
        up = (chosen[li - 1][1] + py) // 2 if li else max(0, py - (chosen[1][1] - chosen[0][1]) // 2)
        down = (chosen[li + 1][1] + py) // 2 if li < N - 1 else min(h - 1, py + (py - chosen[li - 1][1]) // 2)
        x0, x1 = max(0, px - 2), min(w, px + 13)
        win = canal[up:max(up, down) + 1, x0:x1]
        if not win.size:
            out[N + li] = own[N + li]
            continue
        cy, cx = divmod(int(np.argmax(win)), win.shape[1])
        out[N + li] = refine_peak(canal, x0 + cx, up + cy)
    return out


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as e:
        raise DataError(f"{path}: cannot read the image: {e}") from None


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """ROC AUC, None where only one class is present."""
    if len(np.unique(y)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def binary_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean -log p(true class) of (N, 2) probabilities."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1)
    return float(-np.mean(np.log(p[np.arange(len(y)), np.asarray(y, dtype=np.int64)])))


class CanalTask(SliceTask):
    name = "canal"
    channels = DISC_CHANNELS + CANAL_CHANNELS
    classes = ("no_stenosis", "stenosis")
    default_class_weights = "none"
    folder_kind = "Sagittal T2 folder (images/ with boxes.csv or images.csv)"
    # 384 px slices, a few hundred of them: a finer letterbox and many short epochs; a crop of the disc and
    # the canal behind it. One scanner's field of view: wide shifts and zooms, so the localiser does not learn
    # where on the slice a level usually lies (its coordinate channels would), nor one anatomy size
    localizer_defaults = {"input_size": 160, "sigma": 1.5, "shift": 0.2, "zoom": 0.25, "gamma": 0.4}
    grader_defaults = {"crop_frac": 0.22, "zoom": 0.2}
    localizer_loop_defaults = {"epochs": 20, "batch_size": 8}
    grader_loop_defaults = {"epochs": 20, "batch_size": 32}

    def is_folder(self, folder: Path) -> bool:
        return (Path(folder) / BOXES_CSV).is_file() or (Path(folder) / IMAGES_CSV).is_file()

    def read(self, folder):
        return read_canal_slices(folder)

    decode_together = True

    def decode(self, heatmaps):
        return decode_levels(heatmaps)

    def row_channels(self, level: str) -> tuple[int, ...]:
        li = vocab.LEVELS.index(level)
        return (li, N + li)

    def prediction_row(self, probs, xy) -> dict:
        (xd, yd), (xc, yc) = xy
        return {"x_disc": round(xd, 3), "y_disc": round(yd, 3), "x_canal": round(xc, 3), "y_canal": round(yc, 3),
                "stenosis": float(probs[1])}

    def output_columns(self) -> list[str]:
        return ["path", "level", "x_disc", "y_disc", "x_canal", "y_canal", "stenosis"]

    def loss(self, y, p) -> float:
        return binary_log_loss(y, p)

    def score(self, ps: PointSlices, pred: pd.DataFrame, train_ps: PointSlices | None = None) -> dict:
        """Disc-centre and canal-point errors (px of the stored image), levels right, stenosis AUC per level."""
        out: dict = {"n_images": int(ps.slices.shape[0]), "n_patients": int(ps.points["study_id"].nunique())}
        pts = ps.points.reset_index(drop=True)
        if "x" not in pts.columns or ps.landmarks is None:
            return out
        lm = ps.landmarks
        discs_of = {p: g[["x", "y"]].to_numpy(float) for p, g in lm[(lm["channel"] < N)].groupby("path")}
        canal_of = {(r.path, int(r.channel) - N): (r.x, r.y) for r in lm[lm["channel"] >= N].itertuples(index=False)}
        lv = pts["level"].to_numpy()
        truth = np.isfinite(pts["x"].to_numpy(float))
        pd_xy = pred[["x_disc", "y_disc"]].to_numpy(float)
        err = np.hypot(pd_xy[:, 0] - pts["x"].to_numpy(float), pd_xy[:, 1] - pts["y"].to_numpy(float))
        right = np.zeros(len(pts), bool)
        for i in np.flatnonzero(truth):
            d = discs_of[pts["path"].iloc[i]]
            right[i] = np.argmin(np.hypot(d[:, 0] - pd_xy[i, 0], d[:, 1] - pd_xy[i, 1])) == int(
                np.argmin(np.hypot(d[:, 0] - pts["x"].iloc[i], d[:, 1] - pts["y"].iloc[i])))
        out["disc_px"] = error_summary(err[truth])
        out["disc_px_per_level"] = {v: error_summary(err[truth & (lv == v)]) for v in vocab.LEVELS}
        out["levels_right"] = float(right[truth].mean()) if truth.any() else None
        out["levels_right_per_level"] = {v: float(right[truth & (lv == v)].mean()) if (truth & (lv == v)).any()
                                         else None for v in vocab.LEVELS}
        ce, cl = [], []
        for i, r in enumerate(pts.itertuples(index=False)):
            c = canal_of.get((r.path, vocab.LEVELS.index(r.level)))
            if c is not None:
                ce.append(float(np.hypot(pred["x_canal"].iloc[i] - c[0], pred["y_canal"].iloc[i] - c[1])))
                cl.append(r.level)
        ce_a, cl_a = np.asarray(ce), np.asarray(cl)
        out["canal_px"] = error_summary(ce_a)
        out["canal_px_per_level"] = {v: error_summary(ce_a[cl_a == v]) for v in vocab.LEVELS}
        y = ps.labels
        has = y >= 0
        s = pred["stenosis"].to_numpy(float)
        out["stenosis_auc"] = _auc(y[has], s[has])
        out["stenosis_auc_per_level"] = {v: _auc(y[has & (lv == v)], s[has & (lv == v)]) for v in vocab.LEVELS}
        out["stenosis_rate_per_level"] = {v: float(y[has & (lv == v)].mean()) if (has & (lv == v)).any() else None
                                          for v in vocab.LEVELS}
        out["stenosis_log_loss"] = binary_log_loss(y[has], np.stack([1 - s[has], s[has]], 1)) if has.any() else None
        if train_ps is not None:
            rate = float((train_ps.labels[train_ps.labels >= 0]).mean())
            out["prior_log_loss"] = binary_log_loss(y[has], np.tile([1 - rate, rate], (int(has.sum()), 1)))
        return out

    def summary_line(self, h: dict) -> str:
        d, c = h.get("disc_px", {}), h.get("canal_px", {})
        return (f"disc median {d.get('median', float('nan')):.1f} px (p90 {d.get('p90', float('nan')):.1f}), "
                f"levels right {h.get('levels_right') or float('nan'):.1%}, canal median "
                f"{c.get('median', float('nan')):.1f} px, stenosis AUC {h.get('stenosis_auc') or float('nan'):.3f}")

    def evaluate_line(self, ps, metrics: dict) -> str:
        return self.summary_line(metrics) if "disc_px" in metrics else ""

    def fold_row(self, h: dict) -> dict:
        p = h.get("predicted_points", {})
        row = {"disc_median_px": p.get("disc_px", {}).get("median"), "disc_p90_px": p.get("disc_px", {}).get("p90"),
               "levels_right": p.get("levels_right"), "canal_median_px": p.get("canal_px", {}).get("median"),
               "canal_p90_px": p.get("canal_px", {}).get("p90"), "stenosis_auc": p.get("stenosis_auc"),
               "stenosis_auc_true_points": h.get("true_points", {}).get("stenosis_auc"),
               "stenosis_log_loss": p.get("stenosis_log_loss"), "prior_log_loss": p.get("prior_log_loss")}
        row.update({f"auc_{lv}": (p.get("stenosis_auc_per_level") or {}).get(lv) for lv in vocab.LEVELS})
        return row


CANAL = CanalTask()


def write_synthetic_canal_slices(folder: str | Path, n_images: int = 24, size: int = 96, seed: int = 0,
                                 n_discs: tuple[int, int] = (6, 7)) -> Path:
    """A small Sagittal T2 folder in the real layout (images/ + boxes.csv + images.csv), for tests and smoke runs.

    Each image holds a column of 6-7 dark discs (lowest = L5/S1) with a bright canal behind them (to the right,
    posterior as on real slices); a stenotic level narrows the canal at its disc. Boxes: every disc (a bulge box
    drawn over some of them as well), a `spinal_stenosis` box on the canal at each stenotic level. Returns the
    folder.
    """
    import pandas as pd
    from PIL import Image

    from ..files import write_csv_atomic

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    boxes, images = [], []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_images):
        pid = str(100 + i)
        path = f"images/{pid}.jpg"
        nd = int(rng.integers(n_discs[0], n_discs[1] + 1))
        img = rng.normal(60, 6, (size, size))
        step = size * 0.8 / nd
        top = size * 0.12 + rng.normal(0, size * 0.01)
        x0 = size * (0.42 + rng.normal(0, 0.02))
        tilt = rng.normal(0.12, 0.03)
        canal_w = size * 0.05
        sten = rng.random(nd) < 0.35
        for k in range(nd):
            cy = top + k * step
            cx = x0 - tilt * (cy - size / 2)
            body = (np.abs(yy - (cy + step / 2)) < step * 0.35) & (np.abs(xx - cx) < size * 0.1)
            img[body] += 60  # the vertebral body below the disc
            disc = ((yy - cy) / (step * 0.12)) ** 2 + ((xx - cx) / (size * 0.1)) ** 2 < 1
            img[disc] -= 30
            w = canal_w * (0.35 if sten[k] else 1.0)
            ccx = cx + size * 0.16
            band = (np.abs(xx - ccx) < (np.where(np.abs(yy - cy) < step * 0.3, w, canal_w))) & (np.abs(yy - cy) < step / 2)
            img[band] += 110
            dw, dh = size * 0.2, step * 0.3
            boxes.append((path, pid, "normal_disc", cx, cy, dw, dh))
            if rng.random() < 0.2:  # a bulge drawn over the same disc, larger and off its centre
                boxes.append((path, pid, "lumbar_disc_bulge", cx + size * 0.02, cy + step * 0.05, dw * 1.3, dh * 1.6))
            if sten[k]:
                boxes.append((path, pid, STENOSIS, ccx, cy, size * 0.05, step * 0.4))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / path, quality=95)
        images.append((path, pid))
    cols = list(BOX_COLUMNS)
    b = pd.DataFrame(boxes, columns=cols)
    for c in ("x_center", "y_center", "width", "height"):
        b[c] = b[c].round(2)
    write_csv_atomic(b, folder / BOXES_CSV)
    write_csv_atomic(pd.DataFrame(images, columns=list(IMAGE_COLUMNS)), folder / IMAGES_CSV)
    return folder
