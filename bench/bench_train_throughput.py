"""Training throughput (images/s) of the registered models, side by side, on one device.

One training step = forward + backward + AdamW update of a batch of random single-channel images with a
condition vector, as `spinegrade train` runs it (mixed precision on GPU). Data loading is left out: this
measures the network. On a shared CPU the second figure, images per second of this process's CPU time, is the
steadier one (with --threads 1 it is what an idle core would give). Usage:

    nice python bench/bench_train_throughput.py [--size 256] [--batch 16] [--steps 5] [--device auto] [--threads N]
        [--channels 1] [--models NAME NAME:option=value,option=value ...]

e.g. `--models seed-cnn resnet10:widen_factor=0.25 efficientnet-lite0` (options go to the backbone factory).
"""

from __future__ import annotations

import argparse
import ast
import time

import torch

from spinegrade.data.slices import COND_DIM
from spinegrade.models import create_model, list_models
from spinegrade.train.distributed import resolve_device


def parse_spec(spec: str) -> tuple[str, dict]:
    """'NAME' or 'NAME:key=value,key=value' (values as Python literals) -> (name, backbone options)."""
    name, _, opts = spec.partition(":")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        kwargs[key] = ast.literal_eval(value)
    return name, kwargs


def throughput(name: str, size: int, batch: int, steps: int, device: torch.device, warmup: int = 2,
               channels: int = 1, **kwargs) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(name, channels, 3, cond_dim=COND_DIM, **kwargs).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    x = torch.randn(batch, channels, size, size, device=device)
    cond = torch.zeros(batch, COND_DIM, device=device)
    y = torch.randint(0, 3, (batch,), device=device)

    def step():
        with torch.autocast(device.type, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x, cond).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):  # allocator, cuDNN / oneDNN kernel choice
        step()
    if amp:
        torch.cuda.synchronize()
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if amp:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return batch * steps / wall, batch * steps / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", nargs="*", default=None,
                    help="NAME or NAME:option=value,... (default: every registered model)")
    ap.add_argument("--channels", type=int, default=1, help="input channels (3 = 2.5D)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training throughput at {a.size}x{a.size}x{a.channels}, batch {a.batch}, {a.steps} timed steps on {where}")
    print(f"{'model':<32}{'params (M)':>12}{'images/s':>12}{'per CPU-s':>12}")
    for spec in a.models or list_models():
        name, kwargs = parse_spec(spec)
        n = sum(p.numel() for p in create_model(name, a.channels, 3, cond_dim=COND_DIM, **kwargs).parameters()) / 1e6
        ips, per_cpu = throughput(name, a.size, a.batch, a.steps, device, channels=a.channels, **kwargs)
        print(f"{spec:<32}{n:>12.2f}{ips:>12.1f}{per_cpu:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
