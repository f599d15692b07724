"""The local web viewer: upload or pick a study, watch it being graded, read the grades and key images."""

from __future__ import annotations

from .app import create_app, label_predictor, model_predictor, safe_extract, serve

__all__ = ["create_app", "label_predictor", "model_predictor", "safe_extract", "serve"]
