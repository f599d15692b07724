"""A synthetic lumbar spine MRI cohort in the RSNA 2024 layout, whose grades shape the anatomy it shows.

Why it exists: the real data is 1,975 studies under a licence, but tests, demos and CI need a cohort that any
machine makes in seconds, that reads like the real files (same folders, CSVs, DICOM tags and conventions) and
whose labels are learnable. So every study is one 3D phantom in patient coordinates (LPS, mm) whose grades
narrow the matching structure (the CSF column of the canal, the fat of each neural foramen, the fat of each
lateral recess), and every series is sampled from that phantom through its own DICOM geometry. Label
coordinates are the phantom's landmarks projected through the same geometry, so they are exact, and sagittal
and axial series agree in patient space the way real ones do.

The phantom lives in a spine frame: a rotation and an origin place it in the patient, and inside it the
lumbar lordosis is an arc of a circle in the sagittal plane, continued by straight lines above (thoracic) and
below (sacrum). Local coordinates are `s` (arc length along the spine, mm, + superior), `v` (distance from the
posterior border of the vertebral bodies, mm, + posterior) and `w` (mm, + patient left). Anatomy is described
in (s, v, w), so evaluating it on millions of points is a few dozen vectorised numpy operations.

Conventions copied from the real files: sagittal rows run superior -> inferior and columns anterior ->
posterior, InstanceNumber grows from the patient's right to left; axial rows run anterior -> posterior,
columns right -> left (patient left on the image right), InstanceNumber grows superior -> inferior, and the
axial series is either one short stack per disc tilted along the disc or one continuous stack.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..vocab import (AXIAL_T2, CANAL, CONDITION_BY_KEY, CONDITION_NAMES, CONDITIONS, FAMILIES, FORAMINAL, LEVEL_NAMES,
                     LEVELS, ROLE_DESCRIPTIONS, SAGITTAL_T1, SAGITTAL_T2, SEVERITIES, SIDES, SPINAL, SUBARTICULAR,
                     SUBMISSION_TARGETS, TARGETS, condition_at, parse_target, row_id, target)
from ..files import atomic_write_text, write_csv_atomic

GENERATOR = "spinegrade.data.synth"
GENERATOR_VERSION = 1  # bump when the same seed would produce different files
TRUTH_FILE = "synth_truth.json"  # beside the RSNA files, never one of them
IMAGES_DIR = "train_images"
COMPRESS_CHOICES = ("mixed", "rle", None)

# --- tissues and how each sequence shows them ------------------------------------------------------------
AIR, FAT, MUSCLE, VISCERA, MARROW, CORTEX, NUCLEUS, ANNULUS, CSF, NERVE, LIGAMENT, VESSEL, BONE = range(13)
TISSUES = ("air", "fat", "muscle", "viscera", "marrow", "cortex", "nucleus", "annulus", "csf", "nerve",
           "ligament", "vessel", "posterior_bone")
# Relative signal per tissue (order of TISSUES). T1: fat brightest, CSF dark. T2 (fast spin echo): CSF
# brightest, fat bright but clearly below CSF so a CSF threshold separates them. STIR: fat suppressed.
_CONTRAST = {
    "T1": np.array([0, 1.00, 0.32, 0.40, 0.70, 0.06, 0.36, 0.28, 0.16, 0.42, 0.20, 0.05, 0.60], np.float32),
    "T2": np.array([0, 0.58, 0.20, 0.36, 0.40, 0.04, 0.78, 0.14, 1.00, 0.30, 0.10, 0.05, 0.34], np.float32),
    "STIR": np.array([0, 0.07, 0.18, 0.34, 0.15, 0.03, 0.80, 0.14, 1.00, 0.30, 0.08, 0.04, 0.13], np.float32),
}
# How strongly each tissue is modulated by the smooth 3D texture (bowel is blotchy, CSF and ligament uniform).
_TEXTURE = np.array([0, 0.06, 0.12, 0.45, 0.16, 0.05, 0.08, 0.06, 0.02, 0.05, 0.03, 0.05, 0.12], np.float32)

# --- grades --------------------------------------------------------------------------------------------
# Ordinal latent model: a study-level degeneration (think age) plus a level effect (L4/L5 and L5/S1 worst) plus
# family, side and noise terms; cut points put the pooled class mix near the real one (DOMAIN.md: spinal
# 88/7/5 %, foraminal 78/18/4, subarticular 71/19/10). The cut points were calibrated on 200,000 draws.
_LEVEL_BASE = np.array([-1.0, -0.6, -0.1, 0.6, 0.3])
_FAMILY_OFFSET = {SPINAL: np.array([0.0, 0.0, 0.1, 0.2, -0.6]),
                  FORAMINAL: np.array([-0.2, -0.1, 0.0, 0.0, 0.3]),
                  SUBARTICULAR: np.array([0.0, 0.0, 0.1, 0.3, -0.2])}
_CUTS = {SPINAL: (1.27, 1.92), FORAMINAL: (0.91, 2.22), SUBARTICULAR: (0.64, 1.64)}

# Geometric effect of each class, drawn uniformly in the range so grades overlap nothing and a study still varies.
# Canal: compression c -> sac area fraction (1 - 0.8c)(1 - 0.35c): ~0.9-1, ~0.55, ~0.25 of normal.
_CANAL_C = ((0.0, 0.12), (0.40, 0.48), (0.72, 0.80))
# Foramen and lateral recess: fraction of the normal fat area left.
_FAT_FRACTION = ((0.80, 1.05), (0.42, 0.58), (0.15, 0.27))

_N_DISCS = 7  # T11/T12, T12/L1, then the five graded lumbar levels
_LUMBAR0 = 2  # index of L1/L2 among the discs
_STIR_SHARE = 0.25  # share of studies whose sagittal T2 is a STIR
_N_WAVES = 6  # smooth waves summed into the tissue texture


def sample_grades(rng: np.random.Generator) -> tuple[dict[str, int], np.ndarray]:
    """Draw one study's 25 severities (class index per target) and the 0..1 disc degeneration of each level."""
    age = rng.normal()
    level = 0.8 * age + _LEVEL_BASE + rng.normal(0.0, 0.5, 5)
    grades: dict[str, int] = {}
    for family in FAMILIES:
        sides = [None] if family == SPINAL else list(SIDES)
        for side in sides:
            bias = 0.0 if side is None else rng.normal(0.0, 0.35)  # a patient's worse side
            latent = level + _FAMILY_OFFSET[family] + bias + rng.normal(0.0, 0.6, 5)
            cls = np.searchsorted(np.asarray(_CUTS[family]), latent)
            key = condition_at(family, side)
            for lv, g in zip(LEVELS, cls):
                grades[target(key, lv)] = int(g)
    return grades, 1.0 / (1.0 + np.exp(-1.5 * (level - 0.3)))


def _in_range(rng: np.random.Generator, ranges, cls: int) -> float:
    lo, hi = ranges[cls]
    return float(rng.uniform(lo, hi))


def canal_area_fraction(c: float) -> float:
    """Area of the compressed thecal sac relative to its normal area, for a compression c in 0..1."""
    return (1 - 0.8 * c) * (1 - 0.35 * c)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles (radians) about the patient x, y and z axes."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# --- the phantom ---------------------------------------------------------------------------------------
@dataclass
class Phantom:
    """One study's anatomy: where the spine is, how it is shaped, and how narrow each graded structure is.

    Arrays indexed by disc run top to bottom over T11/T12, T12/L1, L1/L2 ... L5/S1; side index 0 is the
    patient's left (w > 0), 1 the right.
    """

    study_id: int
    grades: dict[str, int]
    origin: np.ndarray  # (3,) patient point of the arc apex on the posterior border of the bodies
    rotation: np.ndarray  # (3, 3) columns: the spine frame's x (left), y (posterior), z (superior) in patient axes
    radius: float  # lordosis arc radius (mm)
    arc_top: float  # the arc spans these arc positions; the centre line is straight beyond
    arc_bottom: float
    disc_s: np.ndarray  # (7,) arc position of each disc centre
    disc_half: np.ndarray  # (7,) half disc height
    degeneration: np.ndarray  # (7,) 0..1: darker, thinner nucleus
    canal_c: np.ndarray  # (7,) canal compression at the disc (0 = normal)
    foramen_g: np.ndarray  # (7, 2) fraction of normal foramen fat
    recess_g: np.ndarray  # (7, 2) fraction of normal lateral recess fat
    body_depth: float
    body_width: float
    sac_front: float  # v of the thecal sac's anterior and posterior borders, uncompressed
    sac_back: float
    sac_half_width: float
    foramen_w: float  # |w| of the foramina
    conus_s: float  # the spinal cord ends here; cauda equina below
    sac_end_s: float  # the thecal sac ends here (about S2)
    torso_v: float  # torso ellipse centre, half axes and subcutaneous fat thickness
    torso_half_v: float
    torso_half_w: float
    fat: float
    texture_k: np.ndarray  # (_N_WAVES, 3) wave vectors (rad/mm) of the smooth tissue texture in (s, v, w)
    texture_phase: np.ndarray  # (_N_WAVES,)
    contrast_gain: np.ndarray  # (13,) per-study jitter of the tissue contrasts

    # --- frames -------------------------------------------------------------------------------------------
    # The spine's centre line is an arc of `radius` between s = arc_bottom and s = arc_top (the lordosis) and
    # continues straight along its tangents beyond them (thoracic spine above, sacrum below).
    def to_local(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, v, w) spine coordinates (float32) of patient points (..., 3)."""
        return self._local((np.asarray(points, np.float64) - self.origin) @ self.rotation)

    def _local(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, v, w) of points q (..., 3) given in the spine frame (x left, y posterior, z superior)."""
        R = np.float32(self.radius)
        x, y, z = (np.asarray(q[..., i], np.float32) for i in range(3))
        dy = R - y
        theta = np.arctan2(z, dy)
        s = R * theta
        v = R - np.hypot(dy, z)
        top, bottom = theta > self.arc_top / R, theta < self.arc_bottom / R
        for limit, beyond in ((self.arc_top, top), (self.arc_bottom, bottom)):
            if beyond.any():
                junction, tangent, inward = self._frame_at(limit)
                dy_, dz_ = y[beyond] - junction[0], z[beyond] - junction[1]
                s[beyond] = limit + dy_ * tangent[0] + dz_ * tangent[1]
                v[beyond] = dy_ * inward[0] + dz_ * inward[1]
        return s, v, x

    def to_patient(self, s, v, w) -> np.ndarray:
        """Patient coordinates (..., 3) of spine coordinates."""
        s, v, w = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (s, v, w)))
        sc = np.clip(s, self.arc_bottom, self.arc_top)
        theta, r = sc / self.radius, self.radius - v
        yz = np.stack([self.radius - r * np.cos(theta), r * np.sin(theta)], axis=-1)
        yz += (s - sc)[..., None] * np.stack([np.sin(theta), np.cos(theta)], axis=-1)  # along the tangent
        q = np.concatenate([w[..., None], yz], axis=-1)
        return self.origin + q @ self.rotation.T

    def _frame_at(self, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre-line point, unit tangent (superior) and unit inward normal (posterior) at s, in the (y, z) of
        the spine frame."""
        theta = s / self.radius
        point = self.radius * np.array([1 - np.cos(theta), np.sin(theta)])
        return point, np.array([np.sin(theta), np.cos(theta)]), np.array([np.cos(theta), -np.sin(theta)])

    def axis_at(self, s: float) -> np.ndarray:
        """Unit patient vector along the spine (superior) at arc position s: the normal of the disc there."""
        tangent = self._frame_at(float(np.clip(s, self.arc_bottom, self.arc_top)))[1]
        return self.rotation @ np.r_[0.0, tangent]

    def _curve_depth(self, s):
        """How far posterior the centre line lies at s, in the straight frame (so the torso can bend less)."""
        sc = np.clip(s, self.arc_bottom, self.arc_top)
        theta = sc / self.radius
        return self.radius * (1 - np.cos(theta)) + (s - sc) * np.sin(theta)

    # --- the graded structures ----------------------------------------------------------------------------
    def sac(self, k, ds):
        """Anterior border, posterior border and half-width scale of the thecal sac near disc k."""
        c = self.canal_c[k] * np.exp(-0.5 * (ds / (self.disc_half[k] + 2.5)) ** 2)
        depth = self.sac_back - self.sac_front
        return self.sac_front + 0.55 * c * depth, self.sac_back - 0.25 * c * depth, 1 - 0.35 * c

    def canal_area(self, level: str) -> float:
        """Cross-section (mm2) of the thecal sac at the centre of a disc, before the extra lateral narrowing on
        the side of a narrow recess."""
        k = _LUMBAR0 + LEVELS.index(level)
        front, back, wscale = self.sac(k, 0.0)
        return float(np.pi * (back - front) / 2 * self.sac_half_width * wscale)

    def foramen_fat_area(self, level: str, side: str) -> float:
        """Sagittal area (mm2) of the fat ellipse in a neural foramen."""
        return float(np.pi * 9.0 * 5.0 * self.foramen_g[_LUMBAR0 + LEVELS.index(level), SIDES.index(side)])

    def recess_fat_area(self, level: str, side: str) -> float:
        """Axial area (mm2) of the fat ellipse in a lateral recess (part of it lies behind the sac)."""
        return float(np.pi * 3.2 * 3.8 * self.recess_g[_LUMBAR0 + LEVELS.index(level), SIDES.index(side)])

    def landmarks(self) -> dict[tuple[str, str], np.ndarray]:
        """Patient point of every (condition, level) label: canal centre, foramen centre, lateral recess centre."""
        out = {}
        for i, lv in enumerate(LEVELS):
            k = _LUMBAR0 + i
            s, h = self.disc_s[k], self.disc_half[k]
            front, back, _ = self.sac(k, 0.0)
            out[(CANAL, lv)] = self.to_patient(s, (front + back) / 2, 0.0)
            for j, side in enumerate(SIDES):
                sign = 1.0 if side == "left" else -1.0
                out[(condition_at(FORAMINAL, side), lv)] = self.to_patient(
                    s + h + 4.0, 5.5, sign * self.foramen_w)
                out[(condition_at(SUBARTICULAR, side), lv)] = self.to_patient(
                    s, self.sac_front + 5.0, sign * (self.sac_half_width + 0.5))
        return out

    # --- evaluation -----------------------------------------------------------------------------------------
    def tissue(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tissue class (uint8) and signal gain (float32, < 1 for degenerate nuclei) at patient points (N, 3)."""
        return self.tissue_local(*self.to_local(points))

    def tissue_local(self, s, v, w) -> tuple[np.ndarray, np.ndarray]:
        """`tissue` for points given in spine coordinates (float32 arrays)."""
        lab = np.full(s.shape, AIR, np.uint8)
        gain = np.ones(s.shape, np.float32)
        dv = v + 0.5 * self._curve_depth(s) - self.torso_v  # the torso follows half the lordosis
        lab[(dv / self.torso_half_v) ** 2 + (w / self.torso_half_w) ** 2 < 1] = FAT
        inner = (dv / (self.torso_half_v - self.fat)) ** 2 + (w / (self.torso_half_w - self.fat)) ** 2 < 1
        lab[inner] = VISCERA
        box = np.flatnonzero(inner & (np.abs(w) < 75) & (v > -self.body_depth - 45) & (v < self.sac_back + 75))
        if box.size:
            lab[box], gain[box] = self._spine(s[box], v[box], w[box], lab[box])
        return lab, gain

    def _spine(self, s, v, w, lab):
        """Tissues of the spine and the soft tissue right around it (points already inside the torso)."""
        gain = np.ones(s.shape, np.float32)
        disc_s = self.disc_s.astype(np.float32)
        k = np.searchsorted(-(disc_s[:-1] + disc_s[1:]) / 2, -s)  # nearest disc; discs run top to bottom
        ds = s - disc_s[k]
        h = self.disc_half[k].astype(np.float32)
        aw = np.abs(w)
        depth, width = self.body_depth, self.body_width
        below = np.clip((self.disc_s[_LUMBAR0] - s) / 15.0, 0.0, 8.0)  # grows towards the pelvis
        # soft tissue: retroperitoneal fat, psoas, paraspinal muscles, aorta / iliac arteries, vena cava
        lab[((v + depth / 2) / (depth / 2 + 14)) ** 2 + (w / (width / 2 + 32)) ** 2 < 1] = FAT
        psoas_w = aw - width / 2 - 12 - below / 2
        lab[((v + 0.45 * depth) / (10 + below)) ** 2 + (psoas_w / (9 + below)) ** 2 < 1] = MUSCLE
        back = v - self.sac_back
        lab[((back - 28) / 36) ** 2 + (w / 66) ** 2 < 1] = FAT
        lab[((back - 27) / 26) ** 2 + ((aw - 27) / 24) ** 2 < 1] = MUSCLE  # erector spinae, multifidus
        bifurcation = self.disc_s[_LUMBAR0 + 3] + 10
        artery_w = np.where(s > bifurcation, 14.0, 10.0 + 0.5 * (bifurcation - s))
        artery_r = np.where(s > bifurcation, 9.5, 6.0)
        artery_w = np.where(s > bifurcation, w - artery_w, aw - artery_w)
        lab[((v + depth + 12) ** 2 + artery_w ** 2) < artery_r ** 2] = VESSEL
        lab[((v + depth + 10) / 8) ** 2 + ((w + 20) / 12) ** 2 < 1] = VESSEL
        # vertebral bodies and discs: squarish cross-section, endplates concave so discs bulge at the centre
        x2 = ((v + depth / 2) / (depth / 2)) ** 2
        y2 = (w / (width / 2)) ** 2
        q = 0.5 * (x2 + y2) + 0.5 * (x2 * x2 + y2 * y2)
        hd = h * (1 + 0.22 * (1 - np.minimum(q, 1)))
        in_disc = (q < 1.06) & (np.abs(ds) < hd)
        in_body = (q < 1) & ~in_disc
        lab[in_body] = MARROW
        lab[in_body & ((q > 0.9) | (np.abs(ds) < hd + 1.0))] = CORTEX
        lab[in_disc] = ANNULUS
        nucleus = in_disc & (((v + 0.48 * depth) / (0.3 * depth)) ** 2 + (w / (0.3 * width)) ** 2
                             + (ds / (0.75 * hd)) ** 2 < 1)
        lab[nucleus] = NUCLEUS
        gain[nucleus] = 1 - 0.65 * self.degeneration[k[nucleus]]
        # canal and posterior elements (only where they can be)
        near = np.flatnonzero((aw < self.sac_half_width + 30) & (v > -3) & (v < self.sac_back + 42))
        if near.size:
            lab[near] = self._canal(s[near], v[near], w[near], k[near], ds[near], h[near], lab[near])
        return lab, gain

    def _canal(self, s, v, w, k, ds, h, lab):
        """Canal, thecal sac, foramina, lateral recesses and posterior elements (k: nearest disc, ds: s from it)."""
        front0, back0, rw0 = self.sac_front, self.sac_back, self.sac_half_width
        aw = np.abs(w)
        side = (w < 0).astype(np.intp)  # 0 left, 1 right
        lumbar = k >= _LUMBAR0
        at_disc = np.abs(ds) < h + 7
        g_recess = np.where(at_disc, self.recess_g[k, side], 1.0)
        hyper = 1 - np.minimum(g_recess, 1.0)  # facet hypertrophy that comes with a narrow recess
        # bony canal, filled with epidural fat
        vc0, rv0 = (front0 + back0) / 2, (back0 - front0) / 2
        lab[((v - vc0) / (rv0 + 2)) ** 2 + (w / (rw0 + 4.5)) ** 2 < 1] = FAT
        # facet columns, with a fluid-filled joint line just above the disc
        wc = rw0 + 10 - 2.5 * hyper
        qp = ((v - back0 - 1) / (9 * (1 + 0.25 * hyper))) ** 2 + ((aw - wc) / (7 * (1 + 0.25 * hyper))) ** 2
        lab[qp < 1] = BONE
        lab[(qp < 1) & (qp > 0.75)] = CORTEX
        lab[(qp < 1) & (np.abs(ds - h - 3) < 0.8) & (aw > wc - 2)] = CSF
        # pedicles (upper part of the vertebra below each disc), laminae, spinous processes
        lab[(ds < -h - 2) & (ds > -h - 12) & (v > -2) & (v < back0) & (np.abs(aw - self.foramen_w) < 4.5)] = BONE
        lab[((ds < -h - 3) | (ds > h + 8)) & (v > back0 + 2.5) & (v < back0 + 8) & (aw < rw0 + 9)] = BONE
        spine_band = (aw < 3) & (v > back0 + 5) & (v < back0 + 36)
        gap = (ds > -h - 6) & (ds < h + 1)
        lab[spine_band & ~gap] = BONE
        lab[spine_band & gap] = MUSCLE  # interspinous ligament and fat
        # ligamentum flavum (thickens with stenosis) and the posterior disc bulge
        front, back, wscale = self.sac(k, ds)
        lab[(ds > -h - 3) & (ds < h + 8) & (v > back) & (v < back0 + 4.5) & (aw < rw0 + 3) & (v > vc0)] = LIGAMENT
        lab[lumbar & (np.abs(ds) < h + 1.5) & (v > -0.5) & (v < front) & (aw < rw0 + 2)] = ANNULUS
        # neural foramina: fat around the exiting root; narrowing swaps fat for soft tissue, flattens the root
        g_for = self.foramen_g[k, side]
        sg = np.sqrt(g_for)
        dsf, dvf = ds - h - 4, v - 5.5
        slab = np.abs(aw - self.foramen_w) < 5.5
        lab[slab & ((dsf / 11) ** 2 + (dvf / 6.5) ** 2 < 1)] = LIGAMENT
        lab[slab & ((dsf / (9 * sg)) ** 2 + (dvf / (5 * sg)) ** 2 < 1)] = FAT
        lab[slab & (((dsf - 3.5 * sg) / 2.6) ** 2 + (dvf / (2.4 * (0.5 + 0.5 * g_for))) ** 2 < 1)] = NERVE
        # lateral recesses: fat around the traversing root, bounded by the facet
        sr = np.sqrt(g_recess)
        dvr, dwr = v - front0 - 5, aw - rw0 - 0.5
        lab[at_disc & ((dvr / (3.2 * sr)) ** 2 + (dwr / (3.8 * sr)) ** 2 < 1)] = FAT
        lab[at_disc & (dvr ** 2 + (dwr + 0.8) ** 2 < (1.4 * (0.6 + 0.4 * sr)) ** 2)] = NERVE
        # thecal sac (CSF), narrowed at a stenotic disc and on the side of a narrow recess
        vc, rv = (front + back) / 2, (back - front) / 2
        rw = rw0 * wscale * (1 - 0.2 * hyper)
        sac = (s > self.sac_end_s) & (((v - vc) / rv) ** 2 + (w / rw) ** 2 < 1)
        lab[sac] = CSF
        # spinal cord above the conus; cauda equina roots (dorsal, vertical strands) below it
        taper = np.clip((s - self.conus_s) / 12, 0, 1)
        cord = sac & (s > self.conus_s) & (((v - vc) / 3.6) ** 2 + (w / 4.6) ** 2 < taper)
        roots = sac & (s <= self.conus_s) & (v > vc + 0.3 * rv) & (np.cos(1.9 * w) * np.cos(1.9 * (v - vc)) > 0.55)
        lab[cord | roots] = NERVE
        return lab


def phantom_for_study(seed: int, index: int) -> Phantom:
    """The phantom of study `index` of the cohort made with `seed` (what `synthesize_cohort` renders)."""
    return _make_phantom(_study_ids(seed, index + 1)[index], np.random.default_rng([seed, index, 1]))


def plan_study(seed: int, index: int, compress: str | None = "mixed") -> tuple[Phantom, list[SeriesPlan]]:
    """The phantom and the series (geometry, tags, which one is missing) of one study, without any pixels."""
    return _plan_study(seed, index, _study_ids(seed, index + 1)[index], compress)


def _plan_study(seed: int, index: int, study_id: int, compress: str | None) -> tuple[Phantom, list[SeriesPlan]]:
    # Separate random streams for the phantom, the acquisitions, the noise and the label blanks, so that
    # drawing more of one never shifts another (and the phantom can be rebuilt alone).
    phantom = _make_phantom(study_id, np.random.default_rng([seed, index, 1]))
    return phantom, _plan_series(phantom, np.random.default_rng([seed, index, 2]), compress)


def _make_phantom(study_id: int, rng: np.random.Generator) -> Phantom:
    grades, deg = sample_grades(rng)
    canal = np.zeros(_N_DISCS)
    foramen = np.ones((_N_DISCS, 2))
    recess = np.ones((_N_DISCS, 2))
    degeneration = np.zeros(_N_DISCS)
    for i, lv in enumerate(LEVELS):
        k = _LUMBAR0 + i
        degeneration[k] = deg[i]
        canal[k] = _in_range(rng, _CANAL_C, grades[target(CANAL, lv)])
        for j, side in enumerate(SIDES):
            foramen[k, j] = _in_range(rng, _FAT_FRACTION, grades[target(condition_at(FORAMINAL, side), lv)])
            recess[k, j] = _in_range(rng, _FAT_FRACTION, grades[target(condition_at(SUBARTICULAR, side), lv)])
    # heights: thoracic discs thin, lumbar discs thicker, degenerate discs collapse
    disc_h = np.r_[rng.uniform(5, 6.5, 2), rng.uniform(8.5, 11.5, 5)] * (1 - 0.35 * degeneration)
    body_h = rng.uniform(24, 29, _N_DISCS)  # body above each disc: T11, T12, L1 .. L5
    disc_s = np.zeros(_N_DISCS)
    disc_s[_LUMBAR0 + 2] = rng.uniform(-30, -5)  # L3/L4 near the apex of the lordosis
    for k in range(_LUMBAR0 + 1, -1, -1):
        disc_s[k] = disc_s[k + 1] + disc_h[k + 1] / 2 + body_h[k + 1] + disc_h[k] / 2
    for k in range(_LUMBAR0 + 3, _N_DISCS):
        disc_s[k] = disc_s[k - 1] - disc_h[k - 1] / 2 - body_h[k] - disc_h[k] / 2
    sac_front = rng.uniform(1.0, 2.0)
    sac_back = sac_front + rng.uniform(12.5, 15.5)
    sac_half_width = rng.uniform(9.0, 11.5)
    fat_back = rng.uniform(8, 35)
    torso_depth = rng.uniform(200, 270)
    wave = rng.normal(size=(_N_WAVES, 3))
    wave *= (2 * np.pi / rng.uniform(6, 40, _N_WAVES) / np.linalg.norm(wave, axis=1))[:, None]
    return Phantom(
        study_id=study_id, grades=grades,
        origin=np.array([rng.uniform(-15, 15), rng.uniform(-25, 15), rng.uniform(-520, -380)]),
        rotation=_rotation(*np.radians(rng.uniform(-4, 4, 3))),
        radius=float(rng.uniform(180, 300)), arc_top=float(disc_s[1]), arc_bottom=float(disc_s[-1] - 10),
        disc_s=disc_s, disc_half=disc_h / 2, degeneration=degeneration,
        canal_c=canal, foramen_g=foramen, recess_g=recess,
        body_depth=float(rng.uniform(30, 37)), body_width=float(rng.uniform(40, 49)),
        sac_front=float(sac_front), sac_back=float(sac_back), sac_half_width=float(sac_half_width),
        foramen_w=float(sac_half_width + rng.uniform(9, 11)),
        conus_s=float(disc_s[_LUMBAR0] + rng.uniform(0, 25)), sac_end_s=float(disc_s[-1] - rng.uniform(25, 35)),
        torso_v=float(sac_back + 62 + fat_back - torso_depth / 2), torso_half_v=float(torso_depth / 2),
        torso_half_w=float(rng.uniform(135, 180)), fat=float(fat_back),
        texture_k=wave, texture_phase=rng.uniform(0, 2 * np.pi, _N_WAVES),
        contrast_gain=rng.uniform(0.92, 1.08, len(TISSUES)).astype(np.float32),
    )


# --- acquisitions --------------------------------------------------------------------------------------
@dataclass
class SeriesPlan:
    """What one series acquires: its geometry per slice (acquisition order = InstanceNumber order) and tags."""

    role: str
    series_id: int
    sequence: str  # T1 | T2 | STIR
    description: str  # SeriesDescription inside the files
    orientation: np.ndarray  # (n, 6) per slice: stacks in one axial series differ
    positions: np.ndarray  # (n, 3) ImagePositionPatient
    rows: int
    cols: int
    spacing: float  # square pixels (mm)
    thickness: float
    slice_gap: float  # SpacingBetweenSlices
    echo_time: float | None
    repetition_time: float | None
    inversion_time: float | None
    compressed: bool
    noise: float  # Rician sigma as a fraction of the brightest tissue
    scale: float  # stored value of the brightest tissue
    bias: np.ndarray  # (2,) coil falloff: gain exp(b0 * v / 100 + b1 * s / 100)
    series_number: int = 0

    @property
    def n_slices(self) -> int:
        return int(self.positions.shape[0])

    def project(self, point: np.ndarray) -> tuple[int, float, float] | None:
        """Nearest slice whose image holds the point: (InstanceNumber, x, y), or None if none does."""
        d = np.asarray(point) - self.positions
        row, col = self.orientation[:, :3], self.orientation[:, 3:]
        x = np.einsum("ij,ij->i", d, row) / self.spacing
        y = np.einsum("ij,ij->i", d, col) / self.spacing
        dist = np.abs(np.einsum("ij,ij->i", d, np.cross(row, col)))
        inside = (x >= 0) & (x <= self.cols - 1) & (y >= 0) & (y <= self.rows - 1)
        if not inside.any():
            return None
        i = int(np.argmin(np.where(inside, dist, np.inf)))
        return i + 1, float(x[i]), float(y[i])


# Stored value of the brightest tissue, like the real files (sagittal T2 peaks near 600, T1 and axial near 1,400).
_SCALE = {(SAGITTAL_T1, "T1"): (700, 1500), (SAGITTAL_T2, "T2"): (350, 800), (SAGITTAL_T2, "STIR"): (350, 800),
          (AXIAL_T2, "T2"): (700, 1400)}
_DESCRIPTIONS = {
    "T1": ("T1", "T1", "SAG T1", "SAG T1 FSE", "t1_tse_sag", "Sag T1 TSE"),
    "T2": ("T2", "T2", "SAG T2", "SAG T2 FSE", "t2_tse_sag", "Sag T2 TSE"),
    "STIR": ("STIR", "STIR", "SAG STIR", "t2_tirm_sag STIR", "Sag STIR"),
    "AXIAL": ("T2", "T2", "AX T2", "AXIAL T2 FSE", "t2_tse_tra", "Ax T2 TSE"),
}
_SAG_SIZES = (256, 320, 384, 448, 512, 640)
_SAG_SIZE_P = (0.50, 0.28, 0.10, 0.06, 0.04, 0.02)
_AX_SIZES = (256, 288, 320, 384, 448)
_AX_SIZE_P = (0.50, 0.25, 0.17, 0.05, 0.03)


def _ds(x: float) -> float:
    """A value as it survives a DICOM DS (at most 16 characters): plans hold exactly what the files say."""
    return float(f"{x:.10g}")


def _size_and_spacing(rng, sizes, p, fov_range) -> tuple[int, int, float]:
    """Rows, columns and pixel spacing with an integer field of view in mm, as scanners report."""
    cols = int(rng.choice(sizes, p=p))
    lo, hi = max(0.5, fov_range[0] / cols), min(0.9, fov_range[1] / cols)
    spacing = round(rng.uniform(lo, hi) * cols) / cols
    rows = cols
    if rng.random() < 0.25:  # some scanners acquire a rectangular field of view
        rows = int(np.clip(round(cols * rng.uniform(0.85, 1.2) / 16) * 16, 256, 640))
    return rows, cols, _ds(spacing)


def _image_origin(centre: np.ndarray, row: np.ndarray, col: np.ndarray, rows: int, cols: int, spacing: float):
    return centre - (cols - 1) / 2 * spacing * row - (rows - 1) / 2 * spacing * col


def _keep_inside(centre, points, row, col, rows: int, cols: int, spacing: float, margin: float = 12.0):
    """Shift an image centre in its plane so that every point lies at least `margin` mm inside the image."""
    for axis, n in ((row, cols), (col, rows)):
        half = (n - 1) / 2 * spacing - margin
        t = (points - centre) @ axis
        centre = centre + (max(t.max() - half, 0.0) + min(t.min() + half, 0.0)) * axis
    return centre


def _acquisition_tags(rng, sequence: str, omit: bool) -> tuple[float | None, float | None, float | None]:
    """EchoTime, RepetitionTime, InversionTime; the real RSNA files carry none, so some studies omit them."""
    if omit:
        return None, None, None
    if sequence == "T1":
        return _ds(round(rng.uniform(8, 14), 2)), _ds(round(rng.uniform(400, 700))), None
    if sequence == "STIR":
        ti = _ds(round(rng.uniform(140, 170)))
        return _ds(round(rng.uniform(40, 70), 2)), _ds(round(rng.uniform(3000, 5000))), ti
    return _ds(round(rng.uniform(85, 115), 2)), _ds(round(rng.uniform(2800, 4500))), None


def _plan_series(ph: Phantom, rng: np.random.Generator, compress: str | None) -> list[SeriesPlan]:
    """The series of a study (sagittal T1, sagittal T2/STIR, axial T2, sometimes one missing), all from the
    study's phantom and sharing its frame of reference."""
    omit_tags = rng.random() < 0.5
    missing = rng.choice([None, AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2], p=[0.90, 0.06, 0.02, 0.02])
    series_ids: list[int] = []
    while len(series_ids) < 3:
        sid = int(rng.integers(10_000_000, 4_294_967_295))
        if sid not in series_ids:
            series_ids.append(sid)
    level_s = ph.disc_s[_LUMBAR0:]
    mid_s = float(level_s.mean())
    # sagittal: T1 and T2 share one slightly oblique orientation and slice positions, as on a real scanner
    tilt = _rotation(*np.radians(rng.uniform(-3, 3, 3)))
    row, col = tilt @ np.array([0.0, 1.0, 0.0]), tilt @ np.array([0.0, 0.0, -1.0])
    to_left = -np.cross(row, col)  # the slice normal points to the patient's right; instances go right -> left
    n_sag = int(rng.integers(15, 21))
    thickness = _ds(round(rng.uniform(3.0, 4.5), 1))
    gap = _ds(round(thickness * rng.uniform(1.0, 1.15), 2))
    sag_centre = ph.to_patient(mid_s + rng.uniform(-15, 15), rng.uniform(-15, 5), rng.uniform(-0.5, 0.5) * gap)
    offsets = (np.arange(n_sag) - (n_sag - 1) / 2) * gap
    marks = np.array(list(ph.landmarks().values()))
    plans = []
    t2_seq = "STIR" if rng.random() < _STIR_SHARE else "T2"
    for role, seq in ((SAGITTAL_T1, "T1"), (SAGITTAL_T2, t2_seq)):
        rows, cols, spacing = _size_and_spacing(rng, _SAG_SIZES, _SAG_SIZE_P, (220, 380))
        centre = sag_centre + rng.uniform(-10, 10) * row + rng.uniform(-10, 10) * col  # in-plane: same slices
        centre = _keep_inside(centre, marks, row, col, rows, cols, spacing)
        positions = np.array([_image_origin(centre + o * to_left, row, col, rows, cols, spacing) for o in offsets])
        plans.append(_finish_plan(rng, role, seq, series_ids[len(plans)], np.tile(np.r_[row, col], (n_sag, 1)),
                                  positions, rows, cols, spacing, thickness, gap, omit_tags, compress))
    # axial: one tilted stack per disc level, or one continuous stack
    rows, cols, spacing = _size_and_spacing(rng, _AX_SIZES, _AX_SIZE_P, (150, 230))
    thickness = _ds(round(rng.uniform(3.0, 4.5), 1))
    gap = _ds(round(thickness * rng.uniform(1.0, 1.1), 2))
    in_plane = rng.uniform(-8, 8, 2)
    orientations, positions = [], []

    def add_stack(normal, centre_s, n, drift):
        twist = np.radians(rng.uniform(-3, 3))
        row = np.array([np.cos(twist), np.sin(twist), 0.0])
        row -= (row @ normal) * normal
        row /= np.linalg.norm(row)
        col = np.cross(normal, row)
        centre = ph.to_patient(centre_s, ph.sac_front + 8 + in_plane[0], in_plane[1])
        for j in range(n):  # superior first
            c = centre + ((n - 1) / 2 - j + drift) * gap * normal
            orientations.append(np.r_[row, col])
            positions.append(_image_origin(c, row, col, rows, cols, spacing))

    if rng.random() < 0.7:
        n_per = int(rng.integers(3, 6))
        for s in level_s:
            normal = _rotation(*np.radians(rng.uniform(-2.5, 2.5, 3))) @ ph.axis_at(s)
            add_stack(normal, s, n_per, rng.uniform(-0.5, 0.5))
    else:
        top, bottom = level_s[0] + 12, level_s[-1] - 12
        normal = _rotation(*np.radians(rng.uniform(-2, 2, 3))) @ ph.axis_at(mid_s)
        n = int(np.clip(np.ceil((top - bottom) / gap) + 1, 30, 45))
        add_stack(normal, (top + bottom) / 2, n, 0.0)
    plans.append(_finish_plan(rng, AXIAL_T2, "AXIAL", series_ids[2], np.array(orientations),
                              np.array(positions), rows, cols, spacing, thickness, gap, omit_tags, compress))
    plans = [p for p in plans if p.role != missing]
    for number, plan in enumerate(plans, start=1):
        plan.series_number = number
    return plans


def _finish_plan(rng, role, seq, series_id, orientation, positions, rows, cols, spacing, thickness, gap,
                 omit_tags, compress) -> SeriesPlan:
    sequence = "T2" if seq == "AXIAL" else seq
    te, tr, ti = _acquisition_tags(rng, sequence, omit_tags)
    return SeriesPlan(
        role=role, series_id=series_id, sequence=sequence, description=str(rng.choice(_DESCRIPTIONS[seq])),
        orientation=np.vectorize(_ds)(orientation), positions=np.vectorize(_ds)(positions),
        rows=rows, cols=cols, spacing=spacing, thickness=thickness, slice_gap=gap,
        echo_time=te, repetition_time=tr, inversion_time=ti,
        compressed=compress == "rle" or (compress == "mixed" and rng.random() < 0.85),
        noise=float(rng.uniform(0.015, 0.04)), scale=float(rng.uniform(*_SCALE[role, sequence])),
        bias=np.array([rng.uniform(0.2, 0.6), rng.uniform(-0.2, 0.2)]),
    )


# --- rendering -----------------------------------------------------------------------------------------
def render_slice(ph: Phantom, plan: SeriesPlan, i: int, rng: np.random.Generator) -> np.ndarray:
    """Stored pixel values (uint16, 12 bits) of slice i of a series.

    The phantom is evaluated on a grid of about 1.1 mm (pixel centres aligned with the output grid), lightly
    blurred for partial volume and resampled to the pixel grid; Rician noise is then added per pixel.
    """
    from scipy import ndimage

    f = max(1, int(round(1.1 / plan.spacing)))
    cr, cc = -(-plan.rows // f), -(-plan.cols // f)
    # the coarse grid in the spine frame directly: one affine map, no per-point matrix products
    step = f * plan.spacing
    q0 = (plan.positions[i] + (f - 1) / 2 * plan.spacing * (plan.orientation[i, :3] + plan.orientation[i, 3:])
          - ph.origin) @ ph.rotation
    dx, dy = (plan.orientation[i, :3] @ ph.rotation) * step, (plan.orientation[i, 3:] @ ph.rotation) * step
    xx = np.arange(cc, dtype=np.float32)[None, :, None]
    yy = np.arange(cr, dtype=np.float32)[:, None, None]
    q = (q0.astype(np.float32) + xx * dx.astype(np.float32) + yy * dy.astype(np.float32)).reshape(-1, 3)
    s, v, w = ph._local(q)
    lab, gain = ph.tissue_local(s, v, w)
    k, phase = ph.texture_k.astype(np.float32), ph.texture_phase.astype(np.float32)
    # a product of two sums of waves looks far less regular than one sum
    waves = [np.cos(k[j, 0] * s + k[j, 1] * v + k[j, 2] * w + phase[j]) for j in range(_N_WAVES)]
    texture = 1.5 * sum(waves[: _N_WAVES // 2]) * sum(waves[_N_WAVES // 2:]) / _N_WAVES
    contrast = _CONTRAST[plan.sequence] * ph.contrast_gain
    img = contrast[lab] * gain * (1 + _TEXTURE[lab] * texture)
    img *= np.exp(plan.bias[0] * (v - ph.sac_back) / 100 + plan.bias[1] * s / 100)
    img = ndimage.gaussian_filter(img.reshape(cr, cc), 0.6, mode="nearest")
    if f > 1:
        img = ndimage.zoom(img, f, order=1, mode="nearest", grid_mode=True)
    img = img[: plan.rows, : plan.cols]
    sigma = plan.noise
    noisy = np.hypot(img + sigma * rng.standard_normal(img.shape, np.float32),
                     sigma * rng.standard_normal(img.shape, np.float32))
    return np.clip(noisy * plan.scale, 0, 4095).astype(np.uint16)


# --- DICOM -------------------------------------------------------------------------------------------------
def _uid(*parts) -> str:
    """A UID that depends only on the parts (no clock, no host): same seed, same bytes."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[GENERATOR, *map(str, parts)])


def _write_dicom(path: Path, plan: SeriesPlan, i: int, pixels: np.ndarray, study: dict) -> int:
    """Write slice i of a series as an MR Image Storage file; returns its size in bytes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless

    sop_uid = _uid(study["key"], plan.series_id, i)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.StudyDate = ds.SeriesDate = study["date"]
    ds.Modality = "MR"
    ds.Manufacturer = "spinegrade synthetic"
    ds.StudyDescription = "LUMBAR SPINE"
    ds.SeriesDescription = plan.description
    ds.PatientName = f"SYNTH^{study['study_id']}"
    ds.PatientID = str(study["study_id"])
    ds.BodyPartExamined = "LSPINE"
    ds.ScanningSequence = "IR" if plan.sequence == "STIR" else "SE"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = plan.thickness
    ds.SpacingBetweenSlices = plan.slice_gap
    if plan.repetition_time is not None:
        ds.RepetitionTime = plan.repetition_time
        ds.EchoTime = plan.echo_time
    if plan.inversion_time is not None:
        ds.InversionTime = plan.inversion_time
    ds.MagneticFieldStrength = study["field"]
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study["study_uid"]
    ds.SeriesInstanceUID = _uid(study["key"], plan.series_id)
    ds.StudyID = "1"
    ds.SeriesNumber = plan.series_number
    ds.InstanceNumber = i + 1
    ds.ImagePositionPatient = [float(x) for x in plan.positions[i]]
    ds.ImageOrientationPatient = [float(x) for x in plan.orientation[i]]
    ds.FrameOfReferenceUID = study["for_uid"]
    normal = np.cross(plan.orientation[i, :3], plan.orientation[i, 3:])
    ds.SliceLocation = _ds(float(plan.positions[i] @ normal))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plan.rows, plan.cols
    ds.PixelSpacing = [plan.spacing, plan.spacing]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    lo, hi = np.percentile(pixels[::4, ::4], [1, 99.5])
    ds.WindowCenter, ds.WindowWidth = int((lo + hi) / 2), max(1, int(hi - lo))
    if plan.compressed:
        ds.compress(RLELossless, pixels, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


# --- a study -----------------------------------------------------------------------------------------------
def _study_ids(seed: int, n: int) -> list[int]:
    """Random-looking, unique study ids (7 to 10 digits like the real ones); study i's id does not depend on n."""
    ids: list[int] = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0])
        sid = int(rng.integers(4_000_000, 4_294_967_295))
        while sid in ids:
            sid = int(rng.integers(4_000_000, 4_294_967_295))
        ids.append(sid)
    return ids


def _make_study(seed: int, index: int, study_id: int, images: Path, compress: str | None) -> dict:
    """Render and write one study; return its CSV rows and truth. Top level so that spawned workers can run it."""
    ph, plans = _plan_study(seed, index, study_id, compress)
    key = f"{seed}/{index}"
    visit_rng = np.random.default_rng([seed, index, 5])
    study = {"key": key, "study_id": study_id, "study_uid": _uid(key, "study"), "for_uid": _uid(key, "frame"),
             "date": f"2024{visit_rng.integers(1, 13):02d}{visit_rng.integers(1, 29):02d}",
             "field": float(visit_rng.choice([1.5, 3.0]))}
    final = images / str(study_id)
    tmp = images / f".{study_id}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    noise_rng = np.random.default_rng([seed, index, 3])
    n_bytes = 0
    for plan in plans:
        folder = tmp / str(plan.series_id)
        folder.mkdir(parents=True)
        for i in range(plan.n_slices):
            n_bytes += _write_dicom(folder / f"{i + 1}.dcm", plan, i, render_slice(ph, plan, i, noise_rng), study)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a study appears whole or not at all

    by_role = {p.role: p for p in plans}
    blank = _blank_targets(seed, index)
    coords = []
    for (condition, level), point in ph.landmarks().items():
        plan = by_role.get(CONDITION_BY_KEY[condition].view)
        if plan is None or target(condition, level) in blank:
            continue
        hit = plan.project(point)
        if hit is not None:
            coords.append({"study_id": study_id, "series_id": plan.series_id, "instance_number": hit[0],
                           "condition": CONDITION_NAMES[condition], "level": LEVEL_NAMES[level],
                           "x": hit[1], "y": hit[2]})
    labels = {t: ("" if t in blank else SEVERITIES[g]) for t, g in ph.grades.items()}
    return {
        "study_id": study_id,
        "labels": labels,
        "series": [{"study_id": study_id, "series_id": p.series_id, "series_description": ROLE_DESCRIPTIONS[p.role]}
                   for p in plans],
        "coordinates": coords,
        "n_files": sum(p.n_slices for p in plans),
        "n_bytes": n_bytes,
        "truth": _truth(ph, plans, index, blank),
    }


def _blank_targets(seed: int, index: int) -> set[str]:
    """Targets left without a label (and without coordinates): like the real train.csv, a few studies have some."""
    rng = np.random.default_rng([seed, index, 4])
    if rng.random() >= 0.05:
        return set()
    return {str(t) for t in rng.choice(TARGETS, int(rng.integers(1, 5)), replace=False)}


def _truth(ph: Phantom, plans: list[SeriesPlan], index: int, blank: set[str]) -> dict:
    """What the images were made from, for tests and curious people (JSON-ready)."""
    marks = ph.landmarks()
    levels = {}
    for i, lv in enumerate(LEVELS):
        k = _LUMBAR0 + i
        levels[lv] = {
            "canal_compression": round(float(ph.canal_c[k]), 4),
            "canal_area_mm2": round(ph.canal_area(lv), 2),
            "canal_area_fraction": round(canal_area_fraction(ph.canal_c[k]), 4),
            "foramen_fat_area_mm2": {sd: round(ph.foramen_fat_area(lv, sd), 2) for sd in SIDES},
            "recess_fat_area_mm2": {sd: round(ph.recess_fat_area(lv, sd), 2) for sd in SIDES},
            "disc_degeneration": round(float(ph.degeneration[k]), 4),
            "landmarks_patient_mm": {c: [round(float(x), 3) for x in marks[(c, lv)]] for c in CONDITIONS},
        }
    return {
        "study_id": ph.study_id,
        "index": index,
        "grades": {t: SEVERITIES[g] for t, g in ph.grades.items()},
        "blank_targets": sorted(blank),
        "levels": levels,
        "series": [{"series_id": p.series_id, "role": p.role, "sequence": p.sequence, "description": p.description,
                    "n_slices": p.n_slices, "rows": p.rows, "cols": p.cols, "pixel_spacing": p.spacing,
                    "slice_thickness": p.thickness, "compressed": p.compressed,
                    "acquisition_tags": p.repetition_time is not None} for p in plans],
        "missing_roles": sorted(set(ROLE_DESCRIPTIONS) - {p.role for p in plans}),
    }


# --- the cohort ------------------------------------------------------------------------------------------
def synthesize_cohort(out: Path, n_studies: int = 20, seed: int = 0, workers: int = 1,
                      compress: str | None = "mixed") -> dict:
    """Write a synthetic cohort in the RSNA 2024 training layout under `out`, plus `synth_truth.json`.

    Same seed, same bytes, whatever `workers` is; study i is the same in a cohort of any size. `compress`:
    "mixed" (RLE Lossless for most series, uncompressed for the rest), "rle", or None (all uncompressed).
    Each study folder appears whole (written aside, then renamed) and replaces one of the same id; the CSVs
    are written last, so an interrupted run leaves no table listing a missing study. Returns a summary
    (n_studies, n_files, n_series, n_bytes, seconds, studies_per_minute).
    """
    if n_studies < 1:
        raise ValueError(f"n_studies must be at least 1, got {n_studies}")
    if compress not in COMPRESS_CHOICES:
        raise ValueError(f"compress must be one of {COMPRESS_CHOICES}, got {compress!r}")
    t0 = time.perf_counter()
    out = Path(out)
    images = out / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    ids = _study_ids(seed, n_studies)
    tasks = [(seed, i, sid, images, compress) for i, sid in enumerate(ids)]
    if workers > 1 and n_studies > 1:
        ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and locks
        with ProcessPoolExecutor(min(workers, n_studies), mp_context=ctx) as pool:
            studies = list(pool.map(_make_study_task, tasks))
    else:
        studies = [_make_study(*t) for t in tasks]
    _write_tables(out, studies, seed, compress)
    seconds = time.perf_counter() - t0
    return {
        "out": str(out),
        "n_studies": len(studies),
        "n_files": sum(s["n_files"] for s in studies),
        "n_series": sum(len(s["series"]) for s in studies),
        "n_bytes": sum(s["n_bytes"] for s in studies),
        "seconds": seconds,
        "studies_per_minute": 60 * len(studies) / seconds,
    }


def _make_study_task(task: tuple) -> dict:
    return _make_study(*task)


def _write_tables(out: Path, studies: list[dict], seed: int, compress: str | None) -> None:
    """The four CSVs, sorted like the real ones, and the truth sidecar; each written atomically."""
    import pandas as pd

    studies = sorted(studies, key=lambda s: s["study_id"])
    train = pd.DataFrame([{"study_id": s["study_id"], **{t: s["labels"][t] for t in TARGETS}} for s in studies],
                         columns=["study_id", *TARGETS])
    write_csv_atomic(train, out / "train.csv")
    series = pd.DataFrame([r for s in studies for r in s["series"]],
                          columns=["study_id", "series_id", "series_description"])
    write_csv_atomic(series, out / "train_series_descriptions.csv")
    coords = pd.DataFrame([r for s in studies for r in s["coordinates"]],
                          columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"])
    coords = coords.sort_values(["study_id", "condition", "level"], kind="stable")
    write_csv_atomic(coords, out / "train_label_coordinates.csv")
    rows = [row_id(s["study_id"], *parse_target(t)) for s in studies[:3] for t in SUBMISSION_TARGETS]
    third = 1 / 3
    sub = pd.DataFrame({"row_id": rows, "normal_mild": third, "moderate": third, "severe": third})
    write_csv_atomic(sub, out / "sample_submission.csv")
    truth = {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "spinegrade_version": __version__,
             "seed": seed, "compress": compress, "n_studies": len(studies),
             "note": "synthetic data; not one of the RSNA files",
             "studies": [s["truth"] for s in studies]}
    atomic_write_text(out / TRUTH_FILE, json.dumps(truth, indent=1) + "\n")


# --- measuring what the images show --------------------------------------------------------------------------
def measure_canal_area(dataset: Path, study_id: int, level: str, radius_mm: float = 12.0) -> float:
    """CSF area (mm2) of the canal at a level, measured on the images as a reader without the phantom would.

    The spinal canal label point on the sagittal T2 is mapped through patient coordinates onto the nearest
    axial T2 slice; pixels within `radius_mm` of it brighter than 0.75 x the local 99.5th percentile count
    as CSF (fat and disc stay below that on T2). NaN when the study lacks the point or an axial series.
    """
    import pandas as pd
    import pydicom

    dataset = Path(dataset)
    coords = pd.read_csv(dataset / "train_label_coordinates.csv")
    series = pd.read_csv(dataset / "train_series_descriptions.csv")
    hit = coords[(coords.study_id == study_id) & (coords.condition == CONDITION_NAMES[CANAL])
                 & (coords.level == LEVEL_NAMES[level])]
    axial = series[(series.study_id == study_id) & (series.series_description == ROLE_DESCRIPTIONS[AXIAL_T2])]
    if hit.empty or axial.empty:
        return float("nan")
    h = hit.iloc[0]
    study_dir = dataset / IMAGES_DIR / str(study_id)
    sag = pydicom.dcmread(study_dir / str(h.series_id) / f"{h.instance_number}.dcm", stop_before_pixels=True)
    point = _pixel_to_patient(sag, h.x, h.y)
    best = None
    for f in (study_dir / str(axial.iloc[0].series_id)).glob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        dist, x, y = _patient_to_pixel(ds, point)
        if 0 <= x < ds.Columns and 0 <= y < ds.Rows and (best is None or dist < best[0]):
            best = (dist, f, x, y)
    if best is None:
        return float("nan")
    ds = pydicom.dcmread(best[1])
    img = ds.pixel_array.astype(np.float32)
    spacing = float(ds.PixelSpacing[0])
    yy, xx = np.mgrid[0: img.shape[0], 0: img.shape[1]]
    disk = np.hypot(xx - best[2], yy - best[3]) * spacing <= radius_mm
    ref = np.percentile(img[disk], 99.5)
    return float(np.count_nonzero(img[disk] > 0.75 * ref) * spacing * spacing)


def _pixel_to_patient(ds, x: float, y: float) -> np.ndarray:
    o = np.asarray(ds.ImageOrientationPatient, np.float64)
    rs, cs = (float(v) for v in ds.PixelSpacing)
    return np.asarray(ds.ImagePositionPatient, np.float64) + x * cs * o[:3] + y * rs * o[3:]


def _patient_to_pixel(ds, point: np.ndarray) -> tuple[float, float, float]:
    """(distance from the slice plane, x, y) of a patient point on one slice."""
    o = np.asarray(ds.ImageOrientationPatient, np.float64)
    rs, cs = (float(v) for v in ds.PixelSpacing)
    d = point - np.asarray(ds.ImagePositionPatient, np.float64)
    return abs(float(d @ np.cross(o[:3], o[3:]))), float(d @ o[:3] / cs), float(d @ o[3:] / rs)
