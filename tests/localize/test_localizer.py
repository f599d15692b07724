"""Stage 1 at inference: the Localizer feeds each view's network as its checkpoint says."""

from __future__ import annotations

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
