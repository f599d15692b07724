"""Did the training work? Each trained model against a yardstick it must beat, checked after every stage.

A localiser must place its landmarks better than a fixed per-landmark template (the mean position of each
landmark in the training images, as a fraction of the image) and put at most `MAX_WRONG_LANDMARK` of its
points nearer another landmark's target than its own (a sagittal view: the wrong level; an axial view: the
wrong side). A grader must score a lower weighted log loss on its validation crops than the constant prior
of its training labels. A failed check is printed loudly, written to the run's `summary.json` under
`checks`, makes `train --strict` exit non-zero, and `evaluate` repeats it. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

MAX_WRONG_LANDMARK = 0.05  # share of points on the wrong level/side a working localiser may have ("a few per cent")


@dataclass
class Check:
    stage: str  # "localizer" | "grader"
    name: str  # view or family
    passed: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def check_localizer(view: str, figures: dict) -> Check:
    """`figures`: the best epoch's validation figures with the template's beside them (`train_view` result)."""
    med, wrong = figures.get("val_err_median_mm"), figures.get("val_wrong_landmark")
    tmpl = figures.get("template_err_median_mm")
    if not _finite(med, wrong, tmpl):
        return Check("localizer", view, False, f"localiser {view}: no validation figures to check (no labelled "
                     "validation points?)")
    problems = []
    if med >= tmpl:
        problems.append(f"median error {med:.1f} mm is no better than a fixed per-landmark template's {tmpl:.1f} mm")
    if wrong > MAX_WRONG_LANDMARK:
        problems.append(f"{wrong:.1%} of validation points lie nearer another landmark than their own "
                        f"(at most {MAX_WRONG_LANDMARK:.0%} allowed)")
    figs = (f"median {med:.1f} mm (template {tmpl:.1f}), mean {figures.get('val_err_mm', float('nan')):.1f}, "
            f"90th pct {figures.get('val_err_p90_mm', float('nan')):.1f}, wrong landmark {wrong:.1%}")
    if problems:
        return Check("localizer", view, False, f"localiser {view}: " + "; ".join(problems) + f" [{figs}]")
    return Check("localizer", view, True, f"localiser {view}: {figs}")


def check_grader(family: str, figures: dict) -> Check:
    """`figures`: the best epoch's validation weighted log loss and the prior's on the same crops."""
    wll, prior = figures.get("val_wll"), figures.get("prior_val_wll")
    if not _finite(wll, prior):
        return Check("grader", family, False, f"grader {family}: no validation figures to check (no labelled "
                     "validation crops?)")
    figs = f"weighted log loss {wll:.4f}, prior {prior:.4f}"
    if wll >= prior:
        return Check("grader", family, False, f"grader {family}: no better than its training prior [{figs}]")
    return Check("grader", family, True, f"grader {family}: {figs}")


def run_checks(summary: dict) -> list[Check]:
    """Every check for a study run's summary (`localizer` and `grader` sections, as `train` writes them)."""
    out = [check_localizer(v, f) for v, f in sorted(summary.get("localizer", {}).items())]
    out += [check_grader(fam, f) for fam, f in sorted(summary.get("grader", {}).items())]
    return out


def format_checks(checks: list[Check]) -> str:
    """One line per check; failures stand out (upper case, first)."""
    lines = [f"!! CHECK FAILED: {c.message}" for c in checks if not c.passed]
    lines += [f"   check passed: {c.message}" for c in checks if c.passed]
    return "\n".join(lines)
