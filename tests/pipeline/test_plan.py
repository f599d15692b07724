"""The study pipeline's plan: every `train --data` option reaches it, it round-trips through JSON, it is
refused on resume when it differs, and `train --index` refuses the options it would not read."""

from __future__ import annotations

import json

import pytest

from spinegrade import vocab
from spinegrade.cli import build_parser, main, slice_config_from_args, study_plan_from_args
from spinegrade.errors import DataError, SpinegradeError
from spinegrade.grade.spec import DEFAULT_SPECS
from spinegrade.pipeline.plan import PipelinePlan, build_plan
from spinegrade.pipeline.study import train_study_pipeline


def _plan(*extra: str) -> PipelinePlan:
    return study_plan_from_args(build_parser().parse_args(["train", "--data", "D", "--out", "R", *extra]))


def _loops(p):
    return (p.localizer_loop, p.grader_loop)


# (flags, what must be true of the plan they make); every option `train --data` accepts is listed here
FLAG_EFFECTS = {
    "--cache": (["--cache", "C"], lambda p: p.cache == "C"),
    "--stage": (["--stage", "grader"], lambda p: p.stage == "grader"),
    "--coordinates": (["--coordinates", "fix.csv"], lambda p: p.coordinates == "fix.csv"),
    "--localizer-model": (["--localizer-model", "unet"],
                          lambda p: {s.network for s in p.localizers.values()} == {"unet"}),
    "--localizer-model-kwargs": (["--localizer-model-kwargs", '{"coordinates": false}'],
                                 lambda p: all(s.network_kwargs == {"coordinates": False}
                                               for s in p.localizers.values())),
    "--localizer-size": (["--localizer-size", "48"], lambda p: {s.input_size for s in p.localizers.values()} == {48}),
    "--localizer-epochs": (["--localizer-epochs", "3"], lambda p: p.localizer_loop.epochs == 3
                           and p.grader_loop.epochs == PipelinePlan().grader_loop.epochs),
    "--grader-epochs": (["--grader-epochs", "4"], lambda p: p.grader_loop.epochs == 4
                        and p.localizer_loop.epochs == PipelinePlan().localizer_loop.epochs),
    "--prepare-workers": (["--prepare-workers", "5"], lambda p: p.workers == 5),
    "--spatial-loss": (["--spatial-loss", "0"], lambda p: {s.spatial_weight for s in p.localizers.values()} == {0.0}),
    "--model": (["--model", "resnet10"],
                lambda p: all(g.network == "resnet10" and g.network_kwargs == {} for g in p.graders.values())),
    "--model-kwargs": (["--model-kwargs", '{"pool": 1}'],
                       lambda p: all(g.network_kwargs == {"pool": 1} for g in p.graders.values())),
    "--image-size": (["--image-size", "32"], lambda p: all(g.crop.out_px == 32 and g.crop.size_mm ==
                                                           DEFAULT_SPECS[f].size_mm for f, g in p.graders.items())),
    "--epochs": (["--epochs", "2"], lambda p: all(lp.epochs == 2 for lp in _loops(p))),
    "--batch-size": (["--batch-size", "7"], lambda p: all(lp.batch_size == 7 for lp in _loops(p))),
    "--lr": (["--lr", "0.05"], lambda p: all(lp.lr == 0.05 for lp in _loops(p))),
    "--weight-decay": (["--weight-decay", "0.2"], lambda p: all(lp.weight_decay == 0.2 for lp in _loops(p))),
    "--patience": (["--patience", "0"], lambda p: all(lp.patience == 0 for lp in _loops(p))),
    "--val-fold": (["--val-fold", "2"], lambda p: p.val_fold == 2),
    "--folds": (["--folds", "3"], lambda p: p.folds == 3),
    "--class-weights": (["--class-weights", "none"], lambda p: all(g.class_weights == "none" for g in p.graders.values())),
    "--no-condition": (["--no-condition"], lambda p: not any(g.condition_input for g in p.graders.values())),
    "--no-augment": (["--no-augment"], lambda p: not any(s.augment for s in [*p.localizers.values(),
                                                                              *p.graders.values()])),
    "--device": (["--device", "cpu"], lambda p: all(lp.device == "cpu" for lp in _loops(p))),
    "--no-amp": (["--no-amp"], lambda p: not any(lp.amp for lp in _loops(p))),
    "--seed": (["--seed", "9"], lambda p: all(lp.seed == 9 for lp in _loops(p))),
    "--workers": (["--workers", "3"], lambda p: all(lp.workers == 3 for lp in _loops(p))),
    "--ema": (["--ema", "0.99"], lambda p: all(lp.ema == 0.99 for lp in _loops(p))),
}
# not plan fields: what to train from, where to write, whether to continue
NOT_IN_PLAN = {"--data", "--index", "--slices", "--out", "--resume", "--strict", "--help"}
# the foramen models' own options (tests/slicemodel/test_pipeline.py checks them): refused with --data
FORAMINA_ONLY = {"--all-folds": [], "--pretrained": [], "--crop-frac": ["0.2"], "--exclude-studies": ["1"],
                 "--no-calibrate": [], "--no-refine": [], "--one-grader": [], "--label-smoothing": ["0.1"],
                 "--drop-inconsistent-labels": [], "--pretrained-grader": []}


def test_every_train_option_is_checked_here():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {s for a in train._actions for s in a.option_strings if s.startswith("--")}
    assert options - NOT_IN_PLAN - set(FORAMINA_ONLY) == set(FLAG_EFFECTS)


@pytest.mark.parametrize("flag", sorted(FORAMINA_ONLY))
def test_foramina_options_are_refused_for_the_study_pipeline(flag, tmp_path, capsys):
    from spinegrade.cli import main

    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), flag, *FORAMINA_ONLY[flag]])
    assert rc != 0 and f"{flag}: only for the foramen models (--slices)" in capsys.readouterr().err


@pytest.mark.parametrize("flag", sorted(FLAG_EFFECTS))
def test_each_flag_reaches_the_plan(flag):
    argv, effect = FLAG_EFFECTS[flag]
    default, plan = _plan(), _plan(*argv)
    assert not effect(default), f"{flag}: the default already satisfies the check"
    assert effect(plan)
    assert plan.to_dict() != default.to_dict(), f"{flag} changed nothing the plan records"


def test_defaults_are_the_pipeline_defaults():
    p = _plan()
    assert p.to_dict() == build_plan("D").to_dict()
    assert p.localizers[vocab.SAGITTAL_T1].input_size == 96 and p.localizers[vocab.SAGITTAL_T2].input_size == 64
    assert p.graders[vocab.FORAMINAL].crop == DEFAULT_SPECS[vocab.FORAMINAL]
    assert (p.localizer_loop.epochs, p.grader_loop.epochs) == (14, 20)


@pytest.mark.parametrize("argv, message", [
    (["--cache", "C"], "--cache"), (["--localizer-size", "48", "--stage", "all"], "--stage, --localizer-size"),
    (["--grader-epochs", "2"], "--grader-epochs"),
])
def test_index_refuses_study_pipeline_options(argv, message, capsys):
    a = build_parser().parse_args(["train", "--index", "i.csv", "--out", "R", *argv])
    with pytest.raises(SpinegradeError, match=f"{message}: only for the study pipeline"):
        slice_config_from_args(a)
    assert main(["train", "--index", "i.csv", "--out", "R", *argv]) == 2
    assert "only for the study pipeline" in capsys.readouterr().err


def test_index_options_reach_the_slice_config():
    a = build_parser().parse_args(["train", "--index", "i.csv", "--out", "R", "--image-size", "64", "--epochs", "3",
                                   "--lr", "0.01", "--no-augment", "--no-condition", "--folds", "4"])
    c = slice_config_from_args(a)
    assert (c.image_size, c.loop.epochs, c.loop.lr, c.augment.enabled, c.condition_input, c.folds) == \
        (64, 3, 0.01, False, False, 4)
    assert slice_config_from_args(build_parser().parse_args(["train", "--index", "i", "--out", "R"])).image_size == 160


def test_plan_round_trips_through_json(tmp_path):
    p = _plan("--image-size", "40", "--localizer-size", "80", "--model-kwargs", '{"widths": [4, 4, 8, 8, 8]}')
    p.save(tmp_path / "config.json")
    back = PipelinePlan.load(tmp_path)
    assert back == p and back.graders[vocab.SPINAL].crop.out_px == 40
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["kind"] == "study-pipeline" and d["version"] == PipelinePlan.VERSION


def test_unknown_version_kind_or_field_is_refused():
    d = PipelinePlan().to_dict()
    with pytest.raises(DataError, match="version 99; this spinegrade reads up to 3"):
        PipelinePlan.from_dict({**d, "version": 99})
    with pytest.raises(DataError, match="'slice-grader' configuration, not 'study-pipeline'"):
        PipelinePlan.from_dict({**d, "kind": "slice-grader"})
    d["graders"][vocab.SPINAL]["crop"]["shape"] = "round"
    with pytest.raises(DataError, match=r"graders.spinal.crop: unknown field\(s\) shape"):
        PipelinePlan.from_dict(d)


def test_a_version_1_study_config_is_read_as_a_plan():
    old = {"data": "D", "cache": "", "folds": 5, "val_fold": 1, "stage": "all", "localizer_model": "unet",
           "localizer_size": 80, "localizer_view_sizes": {vocab.SAGITTAL_T1: 96}, "grader_model": "resnet10",
           "grader_kwargs": {"widen_factor": 0.5}, "class_weights": "none", "coordinates": None,
           "localizer_loop": {"epochs": 3}, "grader_loop": {"epochs": 4}, "workers": 2}
    p = PipelinePlan.from_dict(old)
    assert p.val_fold == 1 and p.localizer_loop.epochs == 3 and p.grader_loop.epochs == 4
    assert p.localizers[vocab.SAGITTAL_T2].input_size == 80 and p.localizers[vocab.SAGITTAL_T1].input_size == 96
    assert {s.network for s in p.localizers.values()} == {"unet"}
    g = p.graders[vocab.SPINAL]
    assert (g.network, g.network_kwargs, g.class_weights, g.crop) == \
        ("resnet10", {"widen_factor": 0.5}, "none", DEFAULT_SPECS[vocab.SPINAL])


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "8"], "crop of 8 px"), (["--localizer-size", "50"], "multiple of 16"),
    (["--val-fold", "5"], "--val-fold 5"), (["--epochs", "0"], "epochs and batch size"),
])
def test_plans_that_cannot_work_are_refused(argv, message):
    with pytest.raises(DataError, match=message):
        _plan(*argv)


def test_resume_with_another_plan_names_the_differing_fields(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _plan().save(run / "config.json")
    with pytest.raises(DataError, match="already holds a run"):
        train_study_pipeline(_plan(), run, log=lambda *_: None)
    changed = _plan("--image-size", "32", "--grader-epochs", "3")
    with pytest.raises(DataError) as e:
        train_study_pipeline(changed, run, resume=True, log=lambda *_: None)
    msg = str(e.value)
    assert "--resume with a different configuration" in msg
    assert "graders.spinal.crop.out_px: 48 -> 32" in msg and "grader_loop.epochs: 20 -> 3" in msg
    # where it runs and which stage runs now may change: the check passes and training starts (no data here)
    with pytest.raises(DataError, match="D: ") as e:
        train_study_pipeline(_plan("--device", "cpu", "--stage", "grader", "--workers", "1"), run, resume=True,
                             log=lambda *_: None)
    assert "different configuration" not in str(e.value)


def test_a_version_2_plan_keeps_its_localisers_without_the_spatial_loss():
    d = PipelinePlan().to_dict()
    d["version"] = 2
    for s in d["localizers"].values():
        del s["spatial_weight"]
    p = PipelinePlan.from_dict(d)
    assert {s.spatial_weight for s in p.localizers.values()} == {0.0}
    assert {s.spatial_weight for s in PipelinePlan().localizers.values()} == {0.1}
