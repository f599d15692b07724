"""One checkpoint schema for every kind of model: versioned, upgraded from version 1, refused when newer."""

from __future__ import annotations

import pytest
import torch

from spinegrade import vocab
from spinegrade.errors import DataError
from spinegrade.inputs import COND_DIM
from spinegrade.models import create_model
from spinegrade.train.checkpoint import FORMAT, VERSION, label_schema, load_checkpoint, load_model, prior_record, save_checkpoint


def _spec(name, **kwargs):
    return {"name": name, "in_channels": 3, "num_outputs": 5 if name.startswith("unet") else 3, "kwargs": kwargs}


@pytest.mark.parametrize("name, kwargs", [("unet-small", {}), ("seed-cnn", {"widths": [4, 4, 8, 8, 8],
                                                                           "cond_dim": COND_DIM})])
def test_one_loader_rebuilds_every_kind(tmp_path, name, kwargs):
    torch.manual_seed(0)
    spec = _spec(name, **kwargs)
    net = create_model(spec["name"], spec["in_channels"], spec["num_outputs"], **dict(spec["kwargs"]))
    save_checkpoint(tmp_path / "best.pt", {"kind": "heatmap" if name.startswith("unet") else "grader", "model": spec,
                                           "state_dict": net.state_dict()})
    model, ck = load_model(tmp_path)
    assert ck["format"] == FORMAT and ck["version"] == VERSION and "state_dict" not in ck
    x = torch.randn(1, 3, 32, 32)
    args = (x,) if name.startswith("unet") else (x, torch.eye(COND_DIM)[:1])
    net.eval()
    with torch.no_grad():
        assert torch.equal(model(*args), net(*args))


def test_version_1_is_upgraded_on_load(tmp_path):
    torch.save({"format": "spinegrade.checkpoint/1", "task": "slice-grader", "model": _spec("seed-cnn")}, tmp_path / "a.pt")
    assert load_checkpoint(tmp_path / "a.pt")["kind"] == "slice-grader"
    torch.save({"format": "spinegrade.checkpoint/1", "kind": "grader", "prior": [0.5, 0.3, 0.2]}, tmp_path / "b.pt")
    ck = load_checkpoint(tmp_path / "b.pt")
    assert ck["prior"] == {"class_prior": [0.5, 0.3, 0.2]} and ck["version"] == VERSION


def test_an_unknown_version_is_refused_with_a_message(tmp_path):
    torch.save({"format": FORMAT, "version": VERSION + 1, "kind": "grader"}, tmp_path / "new.pt")
    with pytest.raises(DataError, match=rf"new.pt: checkpoint schema version {VERSION + 1}; .* reads versions 1 to "
                                        rf"{VERSION} \(update spinegrade"):
        load_checkpoint(tmp_path / "new.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a spinegrade checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_label_schema_and_prior_record():
    s = label_schema()
    assert s["classes"] == list(vocab.SEVERITY_KEYS) and len(s["cond_layout"]) == COND_DIM
    r = prior_record([0, 0, 1, 2])
    assert r["class_counts"] == [2, 1, 1]
    # add-one smoothed counts 3, 2, 2; weighted by the metric's 1/2/4: 3, 4, 8
    assert r["class_prior"] == pytest.approx([3 / 7, 2 / 7, 2 / 7])
    assert r["weighted_prior"] == pytest.approx([3 / 15, 4 / 15, 8 / 15])
