"""A zipped synthetic study and a viewer app that shows its ground truth (the label predictor)."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest


def zip_folder(folder: Path, out: Path) -> Path:
    """Zip a study folder with the folder itself as the top-level entry, as people zip a study."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, f.relative_to(folder.parent).as_posix())
    return out


@pytest.fixture(scope="session")
def zip_study():
    """`zip_folder`, for test modules (a fixture: `tests/report/conftest.py` may hold the name `conftest`)."""
    return zip_folder


@pytest.fixture(scope="session")
def synth_study(synth_cohort: Path) -> Path:
    return sorted((synth_cohort / "train_images").iterdir())[0]


@pytest.fixture(scope="session")
def synth_zip(synth_study: Path, tmp_path_factory) -> Path:
    return zip_folder(synth_study, tmp_path_factory.mktemp("zips") / f"{synth_study.name}.zip")


@pytest.fixture
def make_app(synth_cohort: Path, tmp_path: Path):
    """make_app(**create_app kwargs) -> app grading by the synthetic cohort's labels, working under tmp_path."""
    from spinegrade.serve.app import create_app, label_predictor

    def make(**kwargs):
        kwargs.setdefault("work_dir", tmp_path / "work")
        kwargs.setdefault("model_info", {"name": "ground-truth labels", "version": "synth"})
        return create_app(label_predictor(synth_cohort), **kwargs)

    return make


def _wait(client, job_id: str, timeout: float = 120.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        j = client.get(f"/api/jobs/{job_id}").json()
        if j["status"] in ("done", "error"):
            return j
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s (last: {j})")


@pytest.fixture
def wait_for_job():
    """wait_for_job(client, job_id) polls the job until it is done or failed and returns its last status."""
    return _wait
