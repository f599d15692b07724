"""What people look at: key images with the grades drawn on them, HTML reports, and the DICOM SR.

highdicom (in `sr`) and torch/MONAI (in `saliency`) are imported inside the functions that need them, so
importing this package stays light.
"""

from __future__ import annotations

from .html import write_report, write_run_report
from .overlays import KeyImage, Mark, key_images, save_key_images
from .sr import write_sr

__all__ = ["KeyImage", "Mark", "key_images", "save_key_images", "write_report", "write_run_report", "write_sr"]
