"""The task's words: conditions, levels, sides, severities, series roles, row ids, metric weights.

This module imports nothing heavy (no torch, no numpy) so that the CLI's `info`, the CSV readers and the
report writers can all share it. Nothing else in the package spells a condition or level by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- levels --------------------------------------------------------------------------------------------
LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
LEVEL_NAMES: dict[str, str] = {lv: lv.upper().replace("_", "/") for lv in LEVELS}  # "l1_l2" -> "L1/L2"

# --- sides ---------------------------------------------------------------------------------------------
SIDES: tuple[str, ...] = ("left", "right")

# --- condition families and conditions -----------------------------------------------------------------
SPINAL = "spinal"
FORAMINAL = "foraminal"
SUBARTICULAR = "subarticular"
FAMILIES: tuple[str, ...] = (SPINAL, FORAMINAL, SUBARTICULAR)

# --- series roles --------------------------------------------------------------------------------------
SAGITTAL_T1 = "sagittal_t1"
SAGITTAL_T2 = "sagittal_t2"
AXIAL_T2 = "axial_t2"
UNKNOWN_ROLE = "unknown"
SERIES_ROLES: tuple[str, ...] = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)
ROLE_DESCRIPTIONS: dict[str, str] = {
    SAGITTAL_T1: "Sagittal T1",
    SAGITTAL_T2: "Sagittal T2/STIR",
    AXIAL_T2: "Axial T2",
}


@dataclass(frozen=True)
class Condition:
    key: str  # label key, e.g. "left_neural_foraminal_narrowing"
    name: str  # challenge spelling, e.g. "Left Neural Foraminal Narrowing"
    family: str  # spinal | foraminal | subarticular
    side: str | None  # left | right | None (central)
    view: str  # the series role it is read on best


CONDITION_LIST: tuple[Condition, ...] = (
    Condition("spinal_canal_stenosis", "Spinal Canal Stenosis", SPINAL, None, SAGITTAL_T2),
    Condition("left_neural_foraminal_narrowing", "Left Neural Foraminal Narrowing", FORAMINAL, "left", SAGITTAL_T1),
    Condition("right_neural_foraminal_narrowing", "Right Neural Foraminal Narrowing", FORAMINAL, "right", SAGITTAL_T1),
    Condition("left_subarticular_stenosis", "Left Subarticular Stenosis", SUBARTICULAR, "left", AXIAL_T2),
    Condition("right_subarticular_stenosis", "Right Subarticular Stenosis", SUBARTICULAR, "right", AXIAL_T2),
)
CONDITIONS: tuple[str, ...] = tuple(c.key for c in CONDITION_LIST)
CONDITION_BY_KEY: dict[str, Condition] = {c.key: c for c in CONDITION_LIST}
CONDITION_NAMES: dict[str, str] = {c.key: c.name for c in CONDITION_LIST}
FAMILY_CONDITIONS: dict[str, tuple[str, ...]] = {
    f: tuple(c.key for c in CONDITION_LIST if c.family == f) for f in FAMILIES
}
FAMILY_VIEW: dict[str, str] = {SPINAL: SAGITTAL_T2, FORAMINAL: SAGITTAL_T1, SUBARTICULAR: AXIAL_T2}
CANAL: str = CONDITIONS[0]  # the one central condition, "spinal_canal_stenosis"
# a family's name without its side ("neural_foraminal_narrowing"): the metric's terms, a localiser channel
FAMILY_TERMS: dict[str, str] = {SPINAL: CANAL, FORAMINAL: "neural_foraminal_narrowing",
                                SUBARTICULAR: "subarticular_stenosis"}
SHORT_LABELS: dict[str, str] = {CANAL: "Canal", CONDITIONS[1]: "L foramen", CONDITIONS[2]: "R foramen",
                                CONDITIONS[3]: "L subart.", CONDITIONS[4]: "R subart."}  # image annotations

# --- severities ----------------------------------------------------------------------------------------
SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")  # challenge spelling, class index order
SEVERITY_KEYS: tuple[str, ...] = ("normal_mild", "moderate", "severe")  # submission probability columns
SEVERITY_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)  # metric row weight by TRUE class
N_CLASSES = len(SEVERITIES)

# --- targets and row ids -------------------------------------------------------------------------------
TARGETS: tuple[str, ...] = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS)  # train.csv column order
SUBMISSION_COLUMNS: tuple[str, ...] = ("row_id",) + SEVERITY_KEYS
# The challenge's sample submission lists a study's 25 rows sorted by row id.
SUBMISSION_TARGETS: tuple[str, ...] = tuple(sorted(TARGETS))


def target(condition: str, level: str) -> str:
    """The train.csv column for a condition at a level, e.g. 'spinal_canal_stenosis_l1_l2'."""
    return f"{parse_condition(condition)}_{parse_level(level)}"


def row_id(study_id: int | str, condition: str, level: str) -> str:
    """The submission row id `<study_id>_<condition>_<level>`."""
    return f"{study_id}_{target(condition, level)}"


_ROW_ID = re.compile(r"^(\d+)_(" + "|".join(CONDITIONS) + r")_(" + "|".join(LEVELS) + r")$")


def parse_row_id(rid: str) -> tuple[str, str, str]:
    """Split a row id into (study_id, condition, level); ValueError if it is not one."""
    m = _ROW_ID.match(rid.strip())
    if not m:
        raise ValueError(f"not a row id of the form <study_id>_<condition>_<level>: {rid!r}")
    return m.group(1), m.group(2), m.group(3)


def parse_target(col: str) -> tuple[str, str]:
    """Split a train.csv column into (condition, level)."""
    for c in CONDITIONS:
        for lv in LEVELS:
            if col == f"{c}_{lv}":
                return c, lv
    raise ValueError(f"not a target column <condition>_<level>: {col!r}")


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(s).strip().lower()).strip("_")


_CONDITION_ALIASES: dict[str, str] = {}
for _c in CONDITION_LIST:
    _CONDITION_ALIASES[_norm(_c.key)] = _c.key
    _CONDITION_ALIASES[_norm(_c.name)] = _c.key
_LEVEL_ALIASES: dict[str, str] = {}
for _lv in LEVELS:
    _LEVEL_ALIASES[_norm(_lv)] = _lv
    _LEVEL_ALIASES[_norm(LEVEL_NAMES[_lv])] = _lv
    _LEVEL_ALIASES[_norm(_lv.replace("_", ""))] = _lv  # "l1l2"
_SEVERITY_ALIASES: dict[str, int] = {}
for _i, (_name, _key) in enumerate(zip(SEVERITIES, SEVERITY_KEYS)):
    _SEVERITY_ALIASES[_norm(_name)] = _i
    _SEVERITY_ALIASES[_norm(_key)] = _i
_SEVERITY_ALIASES["normal"] = 0
_SEVERITY_ALIASES["mild"] = 0
_ROLE_ALIASES: dict[str, str] = {}
for _r, _d in ROLE_DESCRIPTIONS.items():
    _ROLE_ALIASES[_norm(_r)] = _r
    _ROLE_ALIASES[_norm(_d)] = _r
_ROLE_ALIASES["sagittal_t2"] = SAGITTAL_T2
_ROLE_ALIASES["sagittal_stir"] = SAGITTAL_T2
_ROLE_ALIASES[UNKNOWN_ROLE] = UNKNOWN_ROLE


def parse_condition(s: str) -> str:
    """Accept 'Spinal Canal Stenosis' or 'spinal_canal_stenosis'; return the key."""
    try:
        return _CONDITION_ALIASES[_norm(s)]
    except KeyError:
        raise ValueError(f"unknown condition {s!r}; expected one of {', '.join(CONDITIONS)}") from None


def parse_level(s: str) -> str:
    """Accept 'L1/L2', 'l1_l2' or 'L1-L2'; return the key."""
    try:
        return _LEVEL_ALIASES[_norm(s)]
    except KeyError:
        raise ValueError(f"unknown level {s!r}; expected one of {', '.join(LEVEL_NAMES.values())}") from None


def parse_severity(s: str) -> int:
    """Class index of a severity spelled 'Normal/Mild', 'normal_mild', 'normal', 'Moderate', ...."""
    try:
        return _SEVERITY_ALIASES[_norm(s)]
    except KeyError:
        raise ValueError(f"unknown severity {s!r}; expected one of {', '.join(SEVERITIES)}") from None


def parse_role(s: str) -> str:
    """Accept 'Sagittal T2/STIR' or 'sagittal_t2'; return the role key."""
    try:
        return _ROLE_ALIASES[_norm(s)]
    except KeyError:
        raise ValueError(
            f"unknown series description {s!r}; expected one of {', '.join(ROLE_DESCRIPTIONS.values())}"
        ) from None


def condition_at(family: str, side: str | None) -> str:
    """The condition key of a family on a side (side None for the spinal canal)."""
    for c in CONDITION_LIST:
        if c.family == family and c.side == side:
            return c.key
    raise ValueError(f"no condition for family {family!r} side {side!r}")


def mirror_condition(condition: str) -> str:
    """The same condition on the other side (left <-> right); central conditions map to themselves."""
    c = CONDITION_BY_KEY[parse_condition(condition)]
    if c.side is None:
        return c.key
    return condition_at(c.family, "right" if c.side == "left" else "left")


def describe() -> dict:
    """The whole vocabulary as plain data (for `spinegrade info --json`)."""
    return {
        "conditions": [
            {"key": c.key, "name": c.name, "family": c.family, "side": c.side, "view": c.view}
            for c in CONDITION_LIST
        ],
        "levels": [{"key": lv, "name": LEVEL_NAMES[lv]} for lv in LEVELS],
        "sides": list(SIDES),
        "severities": [
            {"name": n, "key": k, "weight": w} for n, k, w in zip(SEVERITIES, SEVERITY_KEYS, SEVERITY_WEIGHTS)
        ],
        "series_roles": [{"key": r, "description": d} for r, d in ROLE_DESCRIPTIONS.items()]
        + [{"key": UNKNOWN_ROLE, "description": "not recognised"}],
        "families": {f: list(v) for f, v in FAMILY_CONDITIONS.items()},
        "targets": list(TARGETS),
        "row_id_format": "<study_id>_<condition>_<level>",
        "submission_columns": list(SUBMISSION_COLUMNS),
        "metric": {
            "terms": ["spinal_canal_stenosis", "neural_foraminal_narrowing", "subarticular_stenosis",
                      "any_severe_spinal"],
            "row_weights_by_true_class": dict(zip(SEVERITY_KEYS, SEVERITY_WEIGHTS)),
        },
    }
