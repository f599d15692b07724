"""HTML reports: self-contained, the 5 x 5 table, key images, model and time, the research-use line."""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import replace

from PIL import Image

from spinegrade import DISCLAIMER, cli, vocab
from spinegrade.report.html import write_report
from spinegrade.results import write_predictions

_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", re.I)


def _predicted(result):
    probs = {0: [0.8, 0.15, 0.05], 1: [0.2, 0.6, 0.2], 2: [0.1, 0.2, 0.7]}
    return replace(result, findings=[replace(f, source="model", label=None, probs=probs[f.label])
                                     for f in result.findings])


def test_study_report_from_predictions_folder(synth_result, tmp_path):
    study, result = synth_result
    pred = _predicted(result)
    write_predictions(tmp_path / "predictions.json", [pred], model={"name": "seed-cnn", "version": "run-7"},
                      failed=[{"study_id": "42", "error": "no Sagittal T2 series"}])
    assert cli.main(["report", "--predictions", str(tmp_path)]) == 0
    text = (tmp_path / "report.html").read_text()
    assert DISCLAIMER in text and "seed-cnn" in text and "run-7" in text and "Study 42 failed" in text
    assert not _EXTERNAL.search(text) and "<script" not in text  # nothing to fetch, nothing to run
    cells = re.findall(r'<td class="sev(\d)"[^>]*data-condition="([a-z_]+)" data-level="([a-z0-9_]+)"', text)
    assert len(cells) == 25
    for grade, c, lv in cells:
        assert int(grade) == pred.finding(c, lv).grade
    assert "Severe 70%" in text and "Mod 0.60" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 8  # sagittal T2, both foramina, five axial levels
    assert Image.open(io.BytesIO(base64.b64decode(images[0]))).format == "PNG"
    for s in study.series:
        assert f"<td>{s.series_id}</td>" in text


def test_report_without_images_when_the_study_is_gone(synth_result, tmp_path):
    _, result = synth_result
    gone = replace(result, path=str(tmp_path / "moved-away"))
    out = write_report([gone], tmp_path / "r.html", model={"name": "m"})
    text = out.read_text()
    assert "key images not available" in text and "data:image/png" not in text
    assert text.count('data-condition="') == 0 and text.count('<span class="probs">ground-truth label<') == 25


def test_a_study_whose_images_cannot_be_drawn_costs_only_its_images(synth_result, tmp_path, monkeypatch):
    import spinegrade.report.html as report

    study, result = synth_result
    other = replace(result, study_id="other")
    real_key_images = report.key_images

    def key_images(st, r):
        if r.study_id == "other":
            raise ZeroDivisionError("float division by zero")
        return real_key_images(st, r)

    monkeypatch.setattr(report, "key_images", key_images)
    text = write_report([result, other], tmp_path / "r.html", model={"name": "m"},
                        studies={result.study_id: study, "other": study}).read_text()
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 8  # the first study's, all of them
    assert "key images not available: drawing them failed (ZeroDivisionError: float division by zero)" in text


def test_run_report_collects_figures_and_metrics(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    for name in ("curves.png", "eval/confusion_matrix.png", "eval/reliability.png"):
        Image.new("RGB", (20, 10), (200, 10, 10)).save(run / name)
    metrics = {"score": 0.61234, "per_term": {"spinal": 0.5}, "curve": list(range(50))}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.json").write_text(json.dumps({"model": "seed-cnn"}))
    assert cli.main(["report", "--run", str(run), "--out", str(tmp_path / "run.html")]) == 0
    text = (tmp_path / "run.html").read_text()
    assert text.count("data:image/png;base64,") == 3 and not _EXTERNAL.search(text)
    assert "eval/confusion_matrix.png" in text and "0.6123" in text and "per_term.spinal" in text
    assert "[50 values]" in text and "seed-cnn" in text and DISCLAIMER in text


def test_every_target_has_a_cell(synth_result, tmp_path):
    _, result = synth_result
    text = write_report([result], tmp_path / "r.html", studies={}).read_text()
    for c in vocab.CONDITIONS:
        assert vocab.CONDITION_NAMES[c] in text
    for lv in vocab.LEVELS:
        assert f"<th>{vocab.LEVEL_NAMES[lv]}</th>" in text


def test_report_cli_says_what_is_missing(tmp_path, capsys):
    assert cli.main(["report", "--predictions", str(tmp_path)]) == 2
    assert "no predictions.json" in capsys.readouterr().err
    assert cli.main(["report", "--run", str(tmp_path / "nope")]) == 2
