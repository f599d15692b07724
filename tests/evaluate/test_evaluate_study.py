"""`evaluate --data`: the held-out studies of a study-pipeline run scored end to end (the demo's last step)."""

from __future__ import annotations

import json
import math

from spinegrade.evaluate.study import evaluate_study_run


def test_held_out_studies_are_scored_with_localisation_errors(tiny_run, synth_cohort, tmp_path):
    m = evaluate_study_run(tiny_run, synth_cohort, tmp_path / "eval", device="cpu", log=lambda *_: None)
    assert m["held_out"] and m["n_studies"] >= 1 and not m["failed"]
    assert 0 < m["score"]["score"] < 5 and 0 < m["prior"]["score"] < 5
    loc = m["localization"]
    assert loc  # every labelled point was looked for, and the slice offset of those found is a number
    found = [v for v in json.loads((tmp_path / "eval" / "metrics.json").read_text())["localization"].values()
             if isinstance(v, dict) and v.get("found")]
    assert found and all(math.isfinite(v["median_mm"]) for v in found)
