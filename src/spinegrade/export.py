"""Every trained network as ONNX beside its checkpoint (`best.pt` -> `best.onnx`), so that inference runs
without torch (`runtime`). Training calls `export_trained` after it fits; `spinegrade export --run RUN` exports an
older run or a bundled model. Needs torch and the `onnx` package (a train install).

The ONNX file holds the network (batch size free, the input size its checkpoint was trained on) and, in its
metadata, the checkpoint's description without the weights, which is what inference reads. Each export is
checked: ONNX Runtime, where installed, must give torch's outputs on a random input.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import atomic_path
from .runtime import INPUT_NAMES, META_KEY, OUTPUT_NAME, onnx_path

BEST = "best.pt"  # as train.checkpoint names it (imported there with torch)

OPSET = 17
TOLERANCE = 1e-4  # largest |ONNX Runtime - torch| on the check input, relative to the output's scale
INT8_TOLERANCE = 0.05  # largest |int8 - float| network output on the check input, relative to the output's scale
WEIGHTS_KEY = "spinegrade.weights"  # ONNX metadata: how the weights are stored, where not as exported
INT8_WEIGHTS = "int8, one symmetric scale per output channel"
_TRAINING_STATE = ("state_dict", "optimizer", "scheduler", "scaler", "early_stop")


def input_shapes(desc: dict) -> list[tuple[int, ...]]:
    """One example input shape per network input (batch 2), from what the checkpoint says it was fed."""
    spec, pre, model = desc.get("spec") or {}, desc.get("preprocessing") or {}, desc["model"]
    size = (spec.get("input_size") if desc["kind"].endswith(("-localizer", "-refiner")) else None) or spec.get("crop_px") \
        or pre.get("input_size") or (pre.get("crop") or {}).get("out_px") or pre.get("image_size")
    if not size:
        raise DataError(f"a {desc['kind']!r} checkpoint that does not say its input size")
    shapes = [(2, int(model["in_channels"]), int(size), int(size))]
    cond = int((model.get("kwargs") or {}).get("cond_dim") or 0)
    return shapes + [(2, cond)] if cond else shapes


def description(ckpt: dict) -> dict:
    """The checkpoint as plain JSON data, without weights or training state."""
    def plain(o):
        return o.tolist() if hasattr(o, "tolist") else str(o)

    return json.loads(json.dumps({k: v for k, v in ckpt.items() if k not in _TRAINING_STATE}, default=plain))


def export_checkpoint(ckpt: str | Path, out: str | Path | None = None, check: bool = True) -> Path:
    """Write the network of one checkpoint as ONNX (default: beside it, `.onnx`); returns the path."""
    import onnx
    import torch

    from .train.checkpoint import load_model

    ckpt = Path(ckpt)
    out = Path(out) if out is not None else onnx_path(ckpt)
    net, desc = load_model(ckpt, "cpu")
    desc = description(desc)
    gen = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(*s, generator=gen) for s in input_shapes(desc))
    names = list(INPUT_NAMES[:len(args)])
    with torch.inference_mode():
        want = net(*args).float().numpy()
    _exportable_pooling(net)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # the TorchScript exporter: exact for these convolutional networks, and needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, str(tmp), input_names=names, output_names=[OUTPUT_NAME], opset_version=OPSET,
                          dynamic_axes={n: {0: "batch"} for n in [*names, OUTPUT_NAME]}, dynamo=False,
                          # batch norm kept apart from the convolutions (ONNX Runtime fuses them when it loads):
                          # the weights stay as trained, so halved ones stay exact in float16
                          training=torch.onnx.TrainingMode.PRESERVE)
        model = onnx.load(str(tmp))
        _store_half_where_exact(model)
        model.metadata_props.add(key=META_KEY, value=json.dumps(desc))
        onnx.save(model, str(tmp))
        if check:
            _check(tmp, [a.numpy() for a in args], want, ckpt)
    return out


def _exportable_pooling(net) -> None:
    """Replace each adaptive average pooling to a grid larger than 1 x 1 by the same averages as two matrix
    products: the TorchScript exporter refuses one whose output size does not divide its input size (the seed
    network pools a 1 x 1 map of a small crop to 4 x 4)."""
    import torch
    from torch import nn

    class PoolAsMatmul(nn.Module):
        def __init__(self, size):
            super().__init__()
            self.size = (size, size) if isinstance(size, int) else tuple(size)

        def forward(self, x):
            h, w = int(x.shape[-2]), int(x.shape[-1])  # fixed by the export's input size
            oh, ow = (o if o is not None else n for o, n in zip(self.size, (h, w)))
            ph, pw = (torch.from_numpy(_pool_matrix(n, o)).to(x.dtype) for n, o in ((h, oh), (w, ow)))
            return ph @ x @ pw.T

    for name, mod in list(net.named_modules()):
        if isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size not in (1, (1, 1)):
            parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            setattr(parent, name.rpartition(".")[2], PoolAsMatmul(mod.output_size))


def _pool_matrix(n: int, out: int) -> np.ndarray:
    """(out, n): row i averages the inputs adaptive pooling gives output i, [floor(i n / out), ceil((i+1) n / out))."""
    m = np.zeros((out, n), dtype=np.float32)
    for i in range(out):
        lo, hi = (i * n) // out, -(-((i + 1) * n) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _store_half_where_exact(model) -> None:
    """Store each float32 weight that float16 holds exactly (a bundled model's weights are halved:
    `slicemodel.bundled.pack_run`) as float16, cast back to float32 in the graph: half the file, the same
    numbers."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    casts = []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(init)
        half = w.astype(np.float16)
        if w.size < 16 or not np.array_equal(half.astype(np.float32), w):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, name + "_f16"))
        casts.append(helper.make_node("Cast", [name + "_f16"], [name], to=TensorProto.FLOAT))
    for i, node in enumerate(casts):
        g.node.insert(i, node)


def quantize_weights(path: str | Path, check: bool = True) -> Path:
    """Store an exported network's weights in int8, in place: each weight of two or more dimensions (the
    convolutions' and linear layers' matrices) as int8 with one symmetric scale per output channel, put back to
    float by a `DequantizeLinear` in the graph; biases and normalisation stay as they were. A quarter of float32,
    half of float16: what lets a bundled model keep more graders inside the package. The activations stay float
    and ONNX Runtime folds the weights back to float when it loads the file (`runtime.OnnxNet`), so it runs at
    float speed. Checked: on a random input its outputs stay within INT8_TOLERANCE of the float network's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    g = model.graph
    if any(p.key == WEIGHTS_KEY for p in model.metadata_props):
        raise DataError(f"{path}: its weights are stored as int8 already")
    halved = {n.input[0]: n for n in g.node if n.op_type == "Cast" and n.input[0].endswith("_f16")}
    kept, added, dequant, dropped = [], [], [], set()
    for init in g.initializer:
        w = numpy_helper.to_array(init)
        name = init.name[:-4] if init.name in halved else init.name
        stored_float = init.data_type == TensorProto.FLOAT or init.name in halved
        if not stored_float or w.ndim < 2 or w.size < 16:
            kept.append(init)
            continue
        flat = w.astype(np.float32).reshape(w.shape[0], -1)
        scale = np.abs(flat).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(flat / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
        added += [numpy_helper.from_array(q, name + "_i8"), numpy_helper.from_array(scale.astype(np.float32), name + "_scale"),
                  numpy_helper.from_array(np.zeros(len(scale), np.int8), name + "_zero")]
        dequant.append(helper.make_node("DequantizeLinear", [name + "_i8", name + "_scale", name + "_zero"], [name],
                                        axis=0))
        if init.name in halved:
            dropped.add(id(halved[init.name]))
    if not dequant:
        raise DataError(f"{path}: no weights of two or more dimensions to store as int8")
    nodes = [n for n in g.node if id(n) not in dropped]
    del g.initializer[:]
    g.initializer.extend(kept + added)
    del g.node[:]
    g.node.extend(dequant + nodes)
    model.metadata_props.add(key=WEIGHTS_KEY, value=INT8_WEIGHTS)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        if check:
            _check_int8(path, tmp)
    return path


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| relative to the output's scale (at least 1)."""
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def _check_int8(float_path: Path, int8_path: Path) -> None:
    try:
        from .runtime import OnnxNet
        before, after = OnnxNet(float_path, ["CPUExecutionProvider"], 1), OnnxNet(int8_path, ["CPUExecutionProvider"], 1)
    except ImportError:  # no onnxruntime in this install: nothing to check against
        return
    gen = np.random.default_rng(0)
    inputs = [gen.standard_normal(s).astype(np.float32) for s in input_shapes(before.description())]
    err = _relative_error(after(*inputs), before(*inputs))
    if not err <= INT8_TOLERANCE:
        raise DataError(f"{float_path}: its int8 weights move its outputs by {err:.2g} of their scale")


def _check(path: Path, inputs: list[np.ndarray], want: np.ndarray, ckpt: Path) -> None:
    try:
        from .runtime import OnnxNet
        net = OnnxNet(path, ["CPUExecutionProvider"], 1)
    except ImportError:  # no onnxruntime in this install: nothing to check against
        return
    got = net(*inputs)
    err = _relative_error(got, want) if got.shape == want.shape else float("inf")
    if not err <= TOLERANCE:
        raise DataError(f"{ckpt}: the exported network differs from torch's by {err:.2g} (shape {got.shape})")


def export_run(run: str | Path, log=None) -> list[Path]:
    """Export every `best.pt` under a run folder (a study run, a slice run, a folder of folds, a bundled
    model); returns the ONNX files written."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"{run}: no such run folder")
    ckpts = sorted(run.rglob(BEST))
    if not ckpts:
        raise DataError(f"{run}: holds no trained network ({BEST})")
    out = []
    for c in ckpts:
        out.append(export_checkpoint(c))
        if log is not None:
            log(f"exported {c.relative_to(run)} -> {out[-1].name}")
    return out


def export_trained(run: Path, log=print) -> None:
    """`export_run` at the end of training: a network that cannot be exported (no `onnx` package, an operator
    ONNX lacks) is said in the log, and the run stays usable on torch."""
    try:
        export_run(run)
    except Exception as e:
        log(f"{run}: not exported to ONNX ({type(e).__name__}: {e}); fix that, then `spinegrade export --run {run}`")
