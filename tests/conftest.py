"""Shared fixtures. Real RSNA data is read from ../shared/realdata and never copied into the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("SPINEGRADE_REALDATA", REPO.parent / "shared" / "realdata"))
TWO_STUDIES = REALDATA / "rsna2024_dicom_train_2studies"
PNG_SET = REALDATA / "rsna2024_nfn_sagT1_png_vbs2004"


def need_realdata(path: Path = REALDATA) -> Path:
    """Return the path, or skip with a clear message (fail instead under CI's SPINEGRADE_REQUIRE_REALDATA)."""
    if not path.exists():
        msg = f"real RSNA data not found at {path} (put ../shared/realdata beside the repository)"
        if os.environ.get("SPINEGRADE_REQUIRE_REALDATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def realdata() -> Path:
    return need_realdata()


@pytest.fixture(scope="session")
def two_studies() -> Path:
    return need_realdata(TWO_STUDIES)


@pytest.fixture(scope="session")
def png_set() -> Path:
    return need_realdata(PNG_SET)


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory) -> Path:
    """A small synthetic cohort shared by the tests of a session (8 studies)."""
    from spinegrade.data.synth import synthesize_cohort

    out = tmp_path_factory.mktemp("synth") / "cohort"
    synthesize_cohort(out, n_studies=8, seed=1234)
    return out
