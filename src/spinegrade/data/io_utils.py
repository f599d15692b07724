"""Kept so that existing imports work: the atomic writers and output-path checks live in `spinegrade.files`."""

from ..files import (atomic_path, atomic_write_bytes, atomic_write_text, check_output_file, check_output_folder,
                     make_output_folder, write_csv_atomic)

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "check_output_file", "check_output_folder",
           "make_output_folder", "write_csv_atomic"]
