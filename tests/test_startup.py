"""Cheap commands stay cheap: `info`, `--help` and `inspect` import neither torch nor MONAI (each run in a
fresh interpreter, the way a user starts them), and `info` still names every registered model and its kind;
`predict` imports torch but neither MONAI, pandas nor scipy, and not pydicom either when every file of the
study takes the reader's fast route (`io/scan.py`). Where torch is not installed (`pip install spinegrade`,
played here by hiding torch from every process the command starts), `predict` grades on ONNX Runtime as torch
grades, and `evaluate` (a bundled model, an exported run), `report`, `serve` and `listen` (and the node's grader
process) do their job without importing torch; so do they where torch is installed and ONNX Runtime chosen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spinegrade
from spinegrade.models import list_models, model_kind

SRC = Path(spinegrade.__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "pandas", "scipy", "pydicom")
MARK = "spinegrade-startup:"  # the wrapper's last word on stderr, after whatever the command logged there
# run the command as `python -m spinegrade` does, then report which heavy packages it imported
_WRAPPER = """
import json, sys
from spinegrade.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:  # --help exits through argparse
    rc = e.code
sys.stdout.flush()
loaded = {m.split('.')[0] for m, v in sys.modules.items() if v is not None}
print(%r, json.dumps({"rc": rc, "heavy": sorted(loaded & set(%r))}), file=sys.stderr)
""" % (MARK, HEAVY)
# First on PYTHONPATH, this folder's sitecustomize hides torch and MONAI from every process started (spawned and
# fork-server children too), as in an install without them (`pip install spinegrade`).
NO_TORCH = Path(__file__).resolve().parent / "notorch"


def _env(torch: bool = True, backend: str | None = None) -> dict:
    """The command's environment: torch importable or not, the backend left to choose (auto) or named."""
    paths = ([] if torch else [str(NO_TORCH)]) + [str(SRC), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    env.pop("SPINEGRADE_BACKEND", None)
    if backend:
        env["SPINEGRADE_BACKEND"] = backend
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", _WRAPPER, *args]


def _report(stderr: str) -> dict:
    """The wrapper's report: {"rc": exit code, "heavy": the heavy packages the process imported}."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith(MARK)]
    assert lines, stderr[-3000:]
    return json.loads(lines[-1][len(MARK):])


def _run(*args: str, torch: bool = True, backend: str | None = None) -> tuple[dict, str]:
    p = subprocess.run(_command(*args), check=False, capture_output=True, text=True, env=_env(torch, backend),
                       timeout=300)
    return _report(p.stderr), p.stdout


@pytest.mark.parametrize("args", [["info"], ["--help"]])
def test_cheap_commands_import_no_torch(args):
    got, out = _run(*args)
    assert got == {"rc": 0, "heavy": []}, f"spinegrade {' '.join(args)}"
    assert out.strip()


def test_info_names_every_model_with_its_kind_without_torch():
    got, out = _run("info", "--json")
    d = json.loads(out)
    assert got["heavy"] == []
    names = list_models(None)
    assert len(names) >= 8 and d["models"] == list_models()
    assert {n: k for k, ns in d["models_by_kind"].items() for n in ns} == {n: model_kind(n) for n in names}
    assert set(d["model_descriptions"]) == set(names) and all(d["model_descriptions"].values())


def test_every_subcommand_help_imports_no_torch():
    from spinegrade.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        got, out = _run(name, "--help")
        assert got == {"rc": 0, "heavy": []}, name
        assert f"usage: spinegrade {name}" in out


def test_inspect_of_a_real_study_imports_no_torch(two_studies):
    study = next(p for p in sorted((two_studies / "train_images").iterdir()) if p.is_dir())
    got, out = _run("inspect", str(study), "--json")
    assert got == {"rc": 0, "heavy": ["pydicom"]}  # inspect shows pydicom's view of a header
    info = json.loads(out)
    assert len(info["series"]) >= 3


def test_predict_imports_torch_but_not_monai_pandas_or_scipy(synth_cohort, tiny_run, tmp_path):
    study = next(p for p in sorted((synth_cohort / "train_images").iterdir()) if p.is_dir())
    got, _ = _run("predict", str(study), "--model", str(tiny_run), "--out", str(tmp_path / "p"), "--device", "cpu")
    assert got == {"rc": 0, "heavy": ["torch"]}  # no pydicom: every synthetic file takes the fast route
    assert (tmp_path / "p" / "submission.csv").read_text().count("\n") == 26  # the header and 25 rows


def _probabilities(out: Path):
    import numpy as np

    rows = [ln.split(",") for ln in (out / "submission.csv").read_text().splitlines()[1:]]
    return [r[0] for r in rows], np.array([[float(x) for x in r[1:]] for r in rows])


@pytest.mark.realdata
def test_predict_without_torch_grades_the_real_studies_as_torch_with_the_bundled_models(real_rsna, tmp_path):
    pytest.importorskip("onnxruntime")
    got = {}
    for torch in (True, False):
        out = tmp_path / f"torch-{torch}"
        info, _ = _run("predict", str(real_rsna), "--out", str(out), "--device", "cpu", torch=torch)
        assert info["rc"] == 0 and ("torch" in info["heavy"]) == torch, info
        got[torch] = _probabilities(out)
    assert got[False][0] == got[True][0] and len(got[False][0]) == 50
    assert abs(got[False][1] - got[True][1]).max() < 1e-4


def test_predict_without_torch_grades_with_a_trained_run_as_torch(synth_cohort, tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    study = next(p for p in sorted((synth_cohort / "train_images").iterdir()) if p.is_dir())
    got = {}
    for torch in (True, False):
        out = tmp_path / f"torch-{torch}"
        info, _ = _run("predict", str(study), "--model", str(tiny_run), "--out", str(out), "--device", "cpu",
                       torch=torch)
        assert info == {"rc": 0, "heavy": ["torch"] if torch else []}
        got[torch] = _probabilities(out)
    assert got[False][0] == got[True][0] and len(got[False][0]) == 25
    assert abs(got[False][1] - got[True][1]).max() < 1e-4


# --- evaluate, report, serve and listen: no torch with ONNX's networks ----------------------------------------
# Each runs twice: torch installed with the ONNX backend chosen (SPINEGRADE_BACKEND=onnx: where torch is installed,
# `auto` grades on torch, as the README says, so only a stray import would bring it in) and torch absent.
ONNX_MODES = [pytest.param(dict(torch=True, backend="onnx"), id="torch-installed"),
              pytest.param(dict(torch=False), id="no-torch")]


def _small_folder(src: Path, dst: Path, csvs: tuple[str, ...], paths: set[str]) -> Path:
    """A labelled slice folder of `src`'s rows whose image path is in `paths`: its CSVs' header and those rows,
    byte for byte, and the images as symbolic links."""
    from conftest import _filter_lines

    dst.mkdir(parents=True)
    for name in csvs:
        (dst / name).write_text(_filter_lines(src / name, paths), encoding="utf-8")
    for p in paths:
        (dst / p).parent.mkdir(parents=True, exist_ok=True)
        (dst / p).symlink_to(src / p)
    return dst


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.realdata
@pytest.mark.parametrize("mode", ONNX_MODES)
def test_evaluate_with_the_bundled_foramen_model_imports_no_torch(mode, foramina_set, tmp_path):
    """The two real RSNA studies kept out of the model's training (20 foramina on 9 slices), scored."""
    from conftest import REAL_STUDIES

    slices = _csv(foramina_set / "slices.csv")
    paths = {r["path"] for r in slices if int(r["study_id"]) in REAL_STUDIES}
    folder = _small_folder(foramina_set, tmp_path / "set", ("slices.csv", "points.csv"), paths)
    out = tmp_path / "out"
    got, _ = _run("evaluate", "--run", "foramina-sagt1-v1", "--slices", str(folder), "--out", str(out), "--device",
                  "cpu", **mode)
    assert got == {"rc": 0, "heavy": ["pandas", "scipy"]}  # pandas and scipy score
    rows = _csv(out / "predictions.csv")
    assert len(rows) == len(_csv(folder / "points.csv")) == 20 and {r["path"] for r in rows} == paths
    for r in rows:
        assert sum(float(r[k]) for k in ("normal_mild", "moderate", "severe")) == pytest.approx(1, abs=1e-6)
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "foramina-sagt1-v1" and m["n_studies"] == 2 and m["n_rows"] == 20
    # graded and placed as the bundled model does (0.52 cross-validated; points within a few px of 250)
    assert m["weighted_log_loss"] < m["class_prior_wll_of_this_set"]
    assert m["localisation_px250"]["median"] < 5


@pytest.mark.realdata
@pytest.mark.parametrize("mode", ONNX_MODES)
def test_evaluate_with_the_bundled_canal_model_imports_no_torch(mode, sagt2_set, tmp_path):
    """Three real Sagittal T2 images (the model trained on every patient of the set: --all), scored."""
    paths = set(sorted({r["path"] for r in _csv(sagt2_set / "boxes.csv")})[:3])
    folder = _small_folder(sagt2_set, tmp_path / "set", ("boxes.csv",), paths)
    out = tmp_path / "out"
    got, _ = _run("evaluate", "--run", "canal-sagt2-v1", "--slices", str(folder), "--all", "--out", str(out),
                  "--device", "cpu", **mode)
    assert got == {"rc": 0, "heavy": ["pandas", "scipy"]}
    rows = _csv(out / "predictions.csv")
    assert len(rows) == 15 and {r["path"] for r in rows} == paths  # five levels of each image
    assert all(0 <= float(r["stenosis"]) <= 1 for r in rows)
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "canal-sagt2-v1" and m["n_images"] == 3
    assert m["canal_px"]["median"] < 5 and m["levels_right"] >= 0.6


@pytest.mark.parametrize("mode", ONNX_MODES)
def test_evaluate_of_a_dataset_with_an_exported_run_imports_no_torch(mode, synth_cohort, tiny_run, tmp_path):
    """The run's held-out studies of the synthetic cohort, graded by its exported networks and scored."""
    out = tmp_path / "out"
    got, _ = _run("evaluate", "--run", str(tiny_run), "--data", str(synth_cohort), "--out", str(out), "--device",
                  "cpu", **mode)
    assert got == {"rc": 0, "heavy": ["pandas", "scipy"]}
    m = json.loads((out / "metrics.json").read_text())
    assert m["held_out"] and m["n_studies"] == 2  # fold 0 of 4 of the 8 studies
    assert 0 < m["score"]["score"] < 10
    rows = _csv(out / "submission.csv")
    assert len(rows) == 25 * m["n_studies"]
    assert all(sum(float(r[k]) for k in ("normal_mild", "moderate", "severe")) == pytest.approx(1, abs=1e-6)
               for r in rows)
    assert sorted(p.name for p in out.glob("confusion_*.png")) == [
        "confusion_foraminal.png", "confusion_spinal.png", "confusion_subarticular.png"]


@pytest.fixture(scope="module")
def bundled_predictions(synth_cohort, tmp_path_factory) -> Path:
    """The bundled models' predictions of a synthetic study, from `predict` without torch."""
    study = next(p for p in sorted((synth_cohort / "train_images").iterdir()) if p.is_dir())
    out = tmp_path_factory.mktemp("bundled") / "pred"
    got, _ = _run("predict", str(study), "--out", str(out), "--device", "cpu", torch=False)
    assert got == {"rc": 0, "heavy": []}
    return out


@pytest.fixture(scope="module")
def evaluated_run(synth_cohort, tiny_run, tmp_path_factory) -> Path:
    """`evaluate --data` of the one-epoch run, without torch: its metrics and confusion matrices."""
    out = tmp_path_factory.mktemp("evaluated") / "eval"
    got, _ = _run("evaluate", "--run", str(tiny_run), "--data", str(synth_cohort), "--out", str(out), "--device",
                  "cpu", torch=False)
    assert got["rc"] == 0
    return out


@pytest.mark.parametrize("mode", [pytest.param(dict(torch=True), id="torch-installed"),
                                  pytest.param(dict(torch=False), id="no-torch")])
def test_report_imports_no_torch(mode, bundled_predictions, evaluated_run, tmp_path):
    """A study report (its key images drawn from the study's files) and a run's report (figures, metrics), with
    torch importable and the backend left to choose: report runs no network."""
    study = json.loads((bundled_predictions / "predictions.json").read_text())["studies"][0]["study_id"]
    html = tmp_path / "study.html"
    got, out = _run("report", "--predictions", str(bundled_predictions), "--out", str(html), **mode)
    assert got == {"rc": 0, "heavy": []} and str(html) in out
    text = html.read_text()
    assert f"Study {study}" in text and "by foramina-sagt1-v1" in text
    assert text.count('src="data:image/png;base64,') >= 4  # the key images

    html = tmp_path / "run.html"
    got, _ = _run("report", "--run", str(evaluated_run), "--out", str(html), **mode)
    assert got == {"rc": 0, "heavy": []}
    text = html.read_text()
    assert text.count('src="data:image/png;base64,') == 3  # the three confusion matrices
