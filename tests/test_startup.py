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
from spinegrade.slicemodel.bundled import default_bundled

SRC = Path(spinegrade.__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "pandas", "scipy", "pydicom")
MARK = "spinegrade-startup:"  # the wrapper's last word on stderr, after whatever the command logged there
# run the command as `python -m spinegrade` does, then report which heavy packages it imported
_WRAPPER = """
import json, signal, sys
from spinegrade.cli import main

def _terminated(signum, frame):  # a server ended by SIGTERM still reports (uvicorn re-raises it once shut down)
    raise SystemExit(128 + signum)

signal.signal(signal.SIGTERM, _terminated)
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
    from root_conftest import _filter_lines

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
    from root_conftest import REAL_STUDIES

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
    assert f"Study {study}" in text and f"by {default_bundled()['foramina']}" in text
    assert text.count('src="data:image/png;base64,') >= 4  # the key images

    html = tmp_path / "run.html"
    got, _ = _run("report", "--run", str(evaluated_run), "--out", str(html), **mode)
    assert got == {"rc": 0, "heavy": []}
    text = html.read_text()
    assert text.count('src="data:image/png;base64,') == 3  # the three confusion matrices


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mapped(pid: int) -> set[str]:
    """Which of torch and ONNX Runtime process `pid` has loaded: their native libraries in its memory map."""
    text = Path(f"/proc/{pid}/maps").read_text()
    return {name for name, needles in (("torch", ("libtorch", "/torch/_C.")),
                                       ("onnxruntime", ("onnxruntime_pybind11_state",)))
            if any(n in text for n in needles)}


class _Server:
    """A serving command in a fresh interpreter (the wrapper), in a session of its own, its output in `log`.
    `stop()` ends it with SIGTERM, as a service manager does, and returns the wrapper's report; `kill()` then
    ends whatever of it is left (every process it started carries SPINEGRADE_TEST_MARK)."""

    def __init__(self, args: list[str], log: Path, torch: bool = True, backend: str | None = None):
        import uuid

        self.log, self.mark = log, f"startup-{uuid.uuid4().hex}"
        env = dict(_env(torch, backend), SPINEGRADE_TEST_MARK=self.mark, OMP_NUM_THREADS="1")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(_command(*args), stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def running(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return True

    def helpers(self) -> list[int]:
        """The processes it started that are still running (grader, fork server, resource tracker)."""
        from launch import marked

        from spinegrade.workers import alive

        return [p for p in marked(self.mark) if p != self.proc.pid and alive(p)]

    def stop(self) -> dict:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        return _report(self.log.read_text())

    def kill(self) -> None:
        import signal

        from launch import marked

        if self.proc.poll() is None:
            self.proc.kill()
        for pid in marked(self.mark):  # only live processes carrying this run's mark
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)


def _wait_for(cond, timeout: float, step: float = 0.2):
    """Poll `cond` until it returns something true (returned) or `timeout` seconds pass (AssertionError)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(step)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("mode", ONNX_MODES)
def test_serve_grades_a_study_with_the_bundled_models_without_torch(mode, synth_cohort, tmp_path):
    """`spinegrade serve` with no model named: a study opened from --studies-dir is graded by the bundled models
    in the server's process (its reader in a fork-server child); neither imports torch."""
    import urllib.request

    study = next(p for p in sorted((synth_cohort / "train_images").iterdir()) if p.is_dir())
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    srv = _Server(["serve", "--port", str(port), "--studies-dir", str(study.parent)], tmp_path / "log", **mode)

    def get(path: str, data: bytes | None = None):
        with urllib.request.urlopen(urllib.request.Request(url + path, data=data), timeout=30) as r:
            return r.status, r.read().decode()

    def page():
        try:
            return srv.running() and get("/")[1]
        except OSError:  # not listening yet
            return None

    try:
        assert "bundled models" in _wait_for(page, timeout=120)
        status, body = get(f"/api/open?name={study.name}", data=b"")
        assert status == 202
        job = json.loads(body)["job"]

        def finished():
            j = srv.running() and json.loads(get(f"/api/jobs/{job}")[1])
            return j if j["status"] in ("done", "error") else None

        done = _wait_for(finished, timeout=120)
        assert done["status"] == "done", done
        result = json.loads(get(f"/api/jobs/{job}/result")[1])
        assert result["study_id"] == study.name and len(result["findings"]) == 25
        by_model = {}
        for f in result["findings"]:
            by_model.setdefault(f["model"] if f["source"] == "model" else f["source"], []).append(f)
        assert {k: len(v) for k, v in by_model.items()} == {default_bundled()["foramina"]: 10, "prior": 15}
        assert sum(p["source"] == "localizer:canal-sagt2-v1" for p in result["points"]) == 5
        assert _mapped(srv.proc.pid) == {"onnxruntime"}  # the networks were loaded in the server, on ONNX
        helpers = srv.helpers()  # the fork server the readers come from, multiprocessing's resource tracker
        assert helpers and all("torch" not in _mapped(p) for p in helpers)
        got = srv.stop()
    finally:
        srv.kill()
    # uvicorn shuts down cleanly on SIGTERM, then raises it again: 128 + 15, where an older uvicorn returns 0
    assert got in ({"rc": 0, "heavy": ["pydicom"]}, {"rc": 143, "heavy": ["pydicom"]}), got


COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("mode", ONNX_MODES)
def test_listen_grades_a_study_with_an_exported_run_without_torch(mode, synth_cohort, tiny_run, tmp_path):
    """`spinegrade listen` with the one-epoch run: a synthetic study C-STOREd to the node comes back as an SR at
    the destination (an SCP here); neither the node nor its grader process imports torch."""
    import threading

    import highdicom as hd
    import pydicom
    from pynetdicom import AE, evt

    received, stored = [], threading.Event()

    def on_store(event):
        path = tmp_path / f"sr-{len(received)}.dcm"
        path.write_bytes(event.encoded_dataset())
        received.append(path)
        stored.set()
        return 0x0000

    pacs = AE(ae_title="STARTUPPACS")
    pacs.add_supported_context(COMPREHENSIVE_3D_SR)
    pacs_port, node_port = _free_port(), _free_port()
    scp = pacs.start_server(("127.0.0.1", pacs_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    study = next(p for p in sorted((synth_cohort / "train_images").iterdir()) if p.is_dir())
    files = sorted(study.rglob("*.dcm"))
    srv = _Server(["listen", "--model", str(tiny_run), "--port", str(node_port), "--destination",
                   f"STARTUPPACS@127.0.0.1:{pacs_port}", "--quiet-seconds", "1", "--store", str(tmp_path / "store")],
                  tmp_path / "log", **mode)

    def echoes() -> bool:  # the node answers once its grader has loaded the run
        srv.running()
        scu = AE(ae_title="STARTUPSCU")
        scu.add_requested_context("1.2.840.10008.1.1")
        assoc = scu.associate("127.0.0.1", node_port, ae_title="SPINEGRADE")
        ok = assoc.is_established and int(assoc.send_c_echo().Status) == 0
        if assoc.is_established:
            assoc.release()
        return ok

    try:
        _wait_for(echoes, timeout=120, step=0.5)
        datasets = [pydicom.dcmread(f) for f in files]
        scu = AE(ae_title="STARTUPSCU")
        for cls, ts in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
            scu.add_requested_context(cls, [ts])  # each file goes as it is encoded (RLE among them)
        assoc = scu.associate("127.0.0.1", node_port, ae_title="SPINEGRADE")
        assert assoc.is_established
        assert {int(assoc.send_c_store(d).Status) for d in datasets} == {0}
        assoc.release()
        _wait_for(lambda: srv.running() and stored.is_set(), timeout=120)
        graders = [p for p in srv.helpers() if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(graders) == 1
        assert _mapped(graders[0]) == {"onnxruntime"}  # the run's networks, on ONNX Runtime
        assert _mapped(srv.proc.pid) == set()  # the node's own process holds no network
        got = srv.stop()
    finally:
        srv.kill()
        scp.shutdown()
    assert got == {"rc": 0, "heavy": ["pydicom"]}, got
    assert len(received) == 1
    sr = hd.sr.srread(received[0])
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.StudyInstanceUID == pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    groups = sr.content.get_planar_roi_measurement_groups() + sr.content.get_image_measurement_groups()
    assert len(groups) == 25
    for g in groups:
        probs = [m.value for m in g.get_measurements() if m.name.meaning.startswith("Probability of")]
        assert len(probs) == 3 and sum(probs) == pytest.approx(1, abs=1e-4)
