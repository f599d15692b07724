"""Cheap commands stay cheap: `info`, `--help` and `inspect` import neither torch nor MONAI (each run in a
fresh interpreter, the way a user starts them), and `info` still names every registered model and its kind;
`predict` imports torch but neither MONAI, pandas nor scipy, and not pydicom either when every file of the
study takes the reader's fast route (`io/scan.py`). Where torch is not installed (`pip install spinegrade`,
played here by making `import torch` fail), `predict` grades on ONNX Runtime as torch grades."""

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
# run the command as `python -m spinegrade` does, then report which heavy packages it imported
_WRAPPER = """
import json, sys
if sys.argv[1] == "--no-torch":  # as in an install without torch: `import torch` fails
    sys.modules.update(torch=None, monai=None)
    del sys.argv[1]
from spinegrade.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:  # --help exits through argparse
    rc = e.code
sys.stdout.flush()
loaded = {m.split('.')[0] for m, v in sys.modules.items() if v is not None}
print(json.dumps({"rc": rc, "heavy": sorted(loaded & set(%r))}), file=sys.stderr)
""" % (HEAVY,)


def _run(*args: str, torch: bool = True) -> tuple[dict, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    env.pop("SPINEGRADE_BACKEND", None)
    flag = [] if torch else ["--no-torch"]
    p = subprocess.run([sys.executable, "-c", _WRAPPER, *flag, *args], check=False, capture_output=True, text=True,
                       env=env, timeout=300)
    return json.loads(p.stderr.strip().splitlines()[-1]), p.stdout


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
