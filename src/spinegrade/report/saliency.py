"""Where the grading model looked: Grad-CAM heat maps for one condition and level, and their overlay.

A heat map is a check, not an explanation: it shows whether the model's evidence lies on the canal or
foramen at all, or on something irrelevant (a wrap-around artefact, the crop border). torch and MONAI are
imported inside the functions, so the report package loads without them.
"""

from __future__ import annotations

import io

import numpy as np


def gradcam(model, x, target_layer: str, class_index: int, cond=None) -> np.ndarray:
    """Grad-CAM heat map (H, W), scaled to 0..1, of logit `class_index` for one input `x` (1, C, H, W).

    `target_layer` is a name from `model.named_modules()` (usually the last convolution). For a model
    that takes a condition vector, pass it as `cond`; for a multi-output head the class index is the flat
    logit index. The model is evaluated in eval mode and left in the mode it was in.
    """
    import torch
    from monai.visualize import GradCAM

    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"gradcam takes one image (1, C, H, W), got shape {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    try:
        # MONAI's default post-processing maps (min, max) to (1, 0), i.e. flips the map: scale it here instead
        cam = GradCAM(nn_module=model, target_layers=target_layer, postprocessing=lambda t: t)
        extra = {} if cond is None else {"cond": cond}
        with torch.enable_grad():  # an input that needs grad keeps torch's full backward hooks quiet
            heat = cam(x.detach().clone().requires_grad_(True), class_idx=int(class_index), **extra)
    finally:
        model.train(was_training)
    h = heat[0, 0].detach().cpu().numpy().astype(np.float32)
    lo, hi = float(h.min()), float(h.max())
    return (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)


def saliency_png(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, scale: int = 4) -> bytes:
    """PNG of a grey crop (H, W) with the heat map blended on top (inferno colours), enlarged `scale` times."""
    from matplotlib import colormaps
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)[..., None].repeat(3, axis=2)
    h = np.asarray(heat, dtype=np.float32)
    if h.shape != img.shape:
        h = np.asarray(Image.fromarray(h).resize(img.shape[::-1], Image.Resampling.BILINEAR))
    colour = colormaps["inferno"](np.clip(h, 0, 1))[..., :3]
    blend = (1 - alpha * h[..., None]) * grey + alpha * h[..., None] * colour
    out = Image.fromarray((blend * 255 + 0.5).astype(np.uint8))
    out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
