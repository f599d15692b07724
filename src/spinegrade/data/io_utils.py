"""Kept so that existing imports work: the atomic writers live in `spinegrade.files`."""

from ..files import atomic_path, atomic_write_bytes, atomic_write_text, write_csv_atomic

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "write_csv_atomic"]
