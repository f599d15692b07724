"""The node's grader step on its own (no network): what it writes for a study, and key images that cannot be
drawn costing themselves, not the SR."""

from __future__ import annotations

import pydicom
import pytest

from spinegrade.node import listen


@pytest.fixture(scope="module")
def worker(tiny_run):
    listen._worker_init(str(tiny_run), "cpu")
    assert listen._worker_ready() == ""
    yield str(tiny_run)
    listen._WORKER.clear()


def test_the_grader_writes_the_sr_and_key_images(worker, synth_cohort, tmp_path):
    study = min((synth_cohort / "train_images").iterdir())
    assert listen._grade_in_worker(str(study), study.name, str(tmp_path), worker, True) == ("", "")
    assert pydicom.dcmread(tmp_path / "sr.dcm").Modality == "SR"
    assert len(list(tmp_path.glob(f"{listen.KEY_IMAGE_PREFIX}*.dcm"))) == 8


def test_key_images_that_cannot_be_drawn_cost_only_themselves(worker, synth_cohort, tmp_path, monkeypatch):
    from spinegrade.report import overlays

    study = min((synth_cohort / "train_images").iterdir())
    (tmp_path / f"{listen.KEY_IMAGE_PREFIX}old.dcm").write_bytes(b"from an earlier grading")

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(overlays, "key_images", broken)
    error, no_key_images = listen._grade_in_worker(str(study), study.name, str(tmp_path), worker, True)
    assert (error, no_key_images) == ("", "ZeroDivisionError: float division by zero")
    assert pydicom.dcmread(tmp_path / "sr.dcm").Modality == "SR"
    assert not list(tmp_path.glob(f"{listen.KEY_IMAGE_PREFIX}*"))  # none sent: no stale nor partial set


def test_a_study_that_cannot_be_read_is_an_error_in_words(worker, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.dcm").write_bytes(b"not dicom")
    error, _ = listen._grade_in_worker(str(tmp_path / "in"), "1.2.3", str(tmp_path / "out"), worker, True)
    assert error == (f"{tmp_path / 'in'}: no readable DICOM image found among 1 files (x.dcm: not a DICOM file (no "
                     "'DICM' marker after the 128-byte preamble))")
