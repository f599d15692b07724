"""Where a trained network runs at inference: on torch (a train install) or on ONNX Runtime (any install).

Every checkpoint `best.pt` has its network exported beside it as `best.onnx` (`train.export`), with the
checkpoint's description (everything but the weights) in the ONNX file's metadata, so an install without
torch knows what each network is and how to feed it. Both backends take and return numpy float32 arrays.

The backend is chosen once, when the models load: `SPINEGRADE_BACKEND` (torch | onnx | auto), `auto` (the
default) meaning torch where it is installed, else ONNX Runtime. This module imports neither.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

BACKENDS = ("torch", "onnx")
BACKEND_ENV = "SPINEGRADE_BACKEND"
ONNX_SUFFIX = ".onnx"
META_KEY = "spinegrade.checkpoint"  # the checkpoint's description (JSON) in the ONNX file's metadata
INPUT_NAMES = ("image", "cond")  # a grader's second input is its condition vector
OUTPUT_NAME = "output"
TRAIN_INSTALL = "pip install 'spinegrade[train]'"


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def choose_backend(requested: str | None = None) -> str:
    """torch or onnx: `requested`, else $SPINEGRADE_BACKEND, else torch where installed, else onnx."""
    b = (requested or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if b == "auto":
        return "torch" if has_torch() else "onnx"
    if b not in BACKENDS:
        raise DataError(f"backend {b!r}: expected auto, {' or '.join(BACKENDS)} (${BACKEND_ENV})")
    if b == "torch" and not has_torch():
        raise DataError(f"backend torch: torch is not installed ({TRAIN_INSTALL})")
    return b


def onnx_path(ckpt: Path) -> Path:
    """The exported network beside a checkpoint: best.pt -> best.onnx."""
    return Path(ckpt).with_suffix(ONNX_SUFFIX)


def has_network(ckpt: Path) -> bool:
    """A checkpoint or its exported network is there (an ONNX-only copy of a run is a run too)."""
    return Path(ckpt).is_file() or onnx_path(ckpt).is_file()


def _threads() -> int:
    """Intra-op threads for ONNX Runtime: what OMP_NUM_THREADS says (as torch reads it), else the usable cores."""
    from .device import usable_cores

    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return usable_cores()


def _providers(spec: str) -> list:
    import onnxruntime as ort

    spec = (spec or "auto").strip().lower()
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if spec == "cpu" or (spec == "auto" and not cuda):
        return ["CPUExecutionProvider"]
    if spec == "auto" or spec.startswith("cuda"):
        if not cuda:
            raise DataError(f"--device {spec}: ONNX Runtime has no CUDA provider here (pip install onnxruntime-gpu)")
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise DataError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


class TorchNet:
    """A network on torch: numpy in, numpy out."""

    def __init__(self, module, device):
        self.module, self.device = module, device

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            xs = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device) for a in arrays]
            return self.module(*xs).float().cpu().numpy()


class OnnxNet:
    """A network on ONNX Runtime: numpy in, numpy out."""

    def __init__(self, path: Path, providers: list, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.log_severity_level = 3  # no warnings about unused initialisers on every load
        # no busy-waiting between runs: a model of several networks (a fold ensemble: ten sessions) would
        # otherwise have each session's idle threads spin on the cores the running one needs
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # weights stored as int8 (`export.quantize_weights`; the activations stay float): folded back to float
        # once, here, instead of dequantised on every call (three times slower)
        so.add_session_config_entry("session.disable_quant_qdq", "1")
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        feed = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.inputs, arrays)}
        return self.session.run(None, feed)[0]

    def description(self) -> dict:
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in meta:
            raise DataError("an ONNX file without spinegrade's description (export it with `spinegrade export`)")
        return json.loads(meta[META_KEY])


@dataclass(frozen=True)
class Runtime:
    """A backend and a device; `load` gives a checkpoint's network on them and the checkpoint's description."""

    backend: str = "torch"
    device: str = "cpu"  # auto | cpu | cuda | cuda:N as asked
    torch_device: object = None  # the resolved torch.device (torch backend)

    @property
    def type(self) -> str:
        """cpu or cuda: where the networks run."""
        if self.backend == "torch":
            return self.torch_device.type
        return "cuda" if _providers(self.device)[0] != "CPUExecutionProvider" else "cpu"

    @property
    def threads(self) -> int:
        if self.backend == "torch":
            import torch

            return torch.get_num_threads()
        return _threads()

    def load(self, ckpt: Path) -> tuple:
        """(network, description) of a checkpoint path (`.../best.pt`); the description is the checkpoint
        without its weights."""
        ckpt = Path(ckpt)
        if self.backend == "torch" and ckpt.is_file():
            from .train.checkpoint import load_model

            module, desc = load_model(ckpt, self.torch_device)
            return TorchNet(module, self.torch_device), desc
        path = onnx_path(ckpt)
        if not path.is_file():
            raise DataError(f"{path}: no exported network beside {ckpt.name} (in a train install: "
                            f"`spinegrade export --run RUN`)")
        try:  # (on the torch backend too where a model ships its networks only as ONNX, as bundled ones may)
            net = OnnxNet(path, _providers(self.device) if self.backend == "onnx" else _torch_side_providers(self),
                          _threads())
        except DataError:
            raise
        except Exception as e:  # onnxruntime raises its own types for a damaged file
            raise DataError(f"{path}: not a readable ONNX network: {e}") from None
        try:
            return net, net.description()
        except DataError as e:
            raise DataError(f"{path}: {e}") from None


def _torch_side_providers(rt: Runtime) -> list:
    """ONNX Runtime's providers for an ONNX-only network on the torch backend: its device's where ONNX Runtime
    has them, else the CPU."""
    try:
        return _providers(rt.device)
    except DataError:
        return _providers("cpu")


def runtime(device="cpu", backend: str | None = None) -> Runtime:
    """The runtime for `device` (auto | cpu | cuda | cuda:N, or a torch.device, or a Runtime: returned as is)."""
    if isinstance(device, Runtime):
        return device
    spec = str(device or "auto")
    b = choose_backend(backend)
    if b == "torch":
        from .device import inference_device

        return Runtime("torch", spec, inference_device(spec))
    _providers(spec)  # an impossible device is an error now, not at the first network
    return Runtime("onnx", spec)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic, as torch.sigmoid computes it (a large negative logit gives 0, without a warning)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax in float64 along `axis`."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
