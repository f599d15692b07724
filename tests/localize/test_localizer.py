"""Stage 1 at inference: the Localizer feeds each view's network as its checkpoint says."""

from __future__ import annotations

import numpy as np
import torch

from spinegrade import vocab
from spinegrade.io.dicom import load_study
from spinegrade.localize.data import VIEW_CHANNELS
from spinegrade.localize.localizer import LOCALIZER_DIR, Localizer
from spinegrade.localize.spec import INPUT_SIZE, N_CHANNELS, LocalizerSpec
from spinegrade.models import create_model
from spinegrade.train.checkpoint import save_checkpoint


def test_localizer_reads_input_size_and_channels_from_its_checkpoints(tmp_path, synth_cohort):
    torch.manual_seed(0)
    for view in vocab.SERIES_ROLES:
        spec = LocalizerSpec(view=view, input_size=32, n_channels=1, network_kwargs={"features": [4, 4, 4, 4, 4, 4]})
        assert (spec.input_size, spec.n_channels) != (INPUT_SIZE, N_CHANNELS)
        k = len(VIEW_CHANNELS[view])
        net = create_model(spec.network, spec.n_channels, k, **spec.network_kwargs)
        save_checkpoint(tmp_path / LOCALIZER_DIR / view / "best.pt", {
            "kind": "heatmap", "view": view, "state_dict": net.state_dict(),
            "model": {"name": spec.network, "in_channels": 1, "num_outputs": k, "kwargs": spec.network_kwargs},
            "preprocessing": {"input_size": 32, "n_channels": 1}})
    loc = Localizer(tmp_path, "cpu")
    assert set(loc.models) == set(vocab.SERIES_ROLES)
    study = load_study(sorted((synth_cohort / "train_images").iterdir())[0])
    calls = []
    original = loc._heatmaps

    def spy(view, images):
        calls.append((view, images.shape[1:]))
        return original(view, images)

    loc._heatmaps = spy
    points, _ = loc.localize(study)  # random weights: where the points land does not matter here
    assert calls and all(shape == (1, 32, 32) for _, shape in calls)
    assert {p.level for p in points if p.role == vocab.SAGITTAL_T2} == set(vocab.LEVELS)


def test_localize_many_batches_views_across_studies_and_equals_one_at_a_time(tiny_run, synth_cohort):
    from dataclasses import replace

    folders = sorted((synth_cohort / "train_images").iterdir())[:4]
    studies = [load_study(f, stored=True) for f in folders]
    # one study without its sagittal T1 and one without its axial T2: each only loses what depends on it
    studies[1] = replace(studies[1], series=[s for s in studies[1].series if s.role != vocab.SAGITTAL_T1])
    studies[2] = replace(studies[2], series=[s for s in studies[2].series if s.role != vocab.AXIAL_T2])
    loc = Localizer(tiny_run, "cpu", batch=1000)
    calls = []
    original = loc._heatmaps

    def spy(view, images):
        calls.append((view, len(images)))
        return original(view, images)

    loc._heatmaps = spy
    many = loc.localize_many(studies)
    assert [v for v, _ in calls] == [vocab.SAGITTAL_T2, vocab.SAGITTAL_T1, vocab.AXIAL_T2]  # one pass per view
    # T2: three central slices of each study; axial: one slice per level of the three studies with axials
    assert calls[0][1] == 12 and calls[2][1] == 15
    calls.clear()
    loc.batch = 2
    alone = [loc.localize(s) for s in studies]
    assert calls and max(n for _, n in calls) <= 2
    for (pa, wa), (pb, wb) in zip(many, alone, strict=True):
        assert wa == wb
        assert [(p.condition, p.level, p.series_id, p.slice_index, p.source) for p in pa] == \
            [(p.condition, p.level, p.series_id, p.slice_index, p.source) for p in pb]
        assert np.allclose([(p.x, p.y) for p in pa], [(p.x, p.y) for p in pb], atol=1e-3)
    assert "no Sagittal T1 series: foramina not localised" in many[1][1]
    assert not any(p.role == vocab.SAGITTAL_T1 for p in many[1][0])
    assert "no Axial T2 series: subarticular recesses not localised" in many[2][1]
    assert {p.condition for p in many[0][0]} == set(vocab.CONDITIONS)
