"""The one image reader: every file a user can give (PNG, JPEG, TIFF, BMP, 16-bit PNG/TIFF, DICOM, NIfTI) becomes
an RGB uint8 picture here. ``sim4seg.data.io.load_image`` (datasets, converters, ``predict``, the app) calls it.

Every failure is a :class:`~sim4seg.data.schema.RecordError` of one line naming the file and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim4seg.data.readers import dicom, nifti, pil
from sim4seg.data.readers.window import WINDOW_CHOICES, Window, parse_window
from sim4seg.data.schema import RecordError
from sim4seg.errors import UserError

__all__ = ["ReadOptions", "WINDOW_CHOICES", "read_image", "read_size"]


@dataclass(frozen=True)
class ReadOptions:
    """How to pick and window one picture from a file.

    frame: DICOM multi-frame index, TIFF page, NIfTI 4-D volume (default 0). axis / slice: NIfTI plane in RAS+
    order (0 sagittal, 1 coronal, 2 or -1 axial, the default) and index along it (default the middle).
    window: ``auto`` (the file's own window, else CT soft tissue for CT and percentiles for MR and high-bit
    pictures; 8-bit pictures as stored), ``ct_soft_tissue``, ``ct_lung``, ``ct_bone``, ``percentile``, or
    ``C,W`` (centre and width in the file's units, e.g. Hounsfield units).
    """

    frame: int = 0
    axis: int = -1
    slice: int | None = None
    window: str = "auto"
    parsed: Window = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.frame < 0 or (self.slice is not None and self.slice < 0):
            raise UserError(f"frame={self.frame}, slice={self.slice}: indices start at 0")
        if self.axis not in (-3, -2, -1, 0, 1, 2):
            raise UserError(f"axis={self.axis}: use 0 (sagittal), 1 (coronal) or 2 (axial, the default)")
        object.__setattr__(self, "parsed", parse_window(self.window))


DEFAULT = ReadOptions()


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise RecordError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    if path.stat().st_size == 0:
        raise RecordError(f"{path}: file is empty (0 bytes)")


def read_image(path: str | Path, max_pixels: int, options: ReadOptions = DEFAULT) -> np.ndarray:
    """Read any supported file as RGB uint8 ``[H, W, 3]`` (see :class:`ReadOptions`)."""
    path = Path(path)
    _check_file(path)
    o = options
    if nifti.is_nifti(path):
        return nifti.read(path, max_pixels, o.frame, o.axis, o.slice, o.parsed)
    if dicom.is_dicom(path):
        return dicom.read(path, max_pixels, o.frame, o.parsed)
    return pil.read(path, max_pixels, o.frame, o.parsed)


def read_size(path: str | Path, max_pixels: int, options: ReadOptions = DEFAULT) -> tuple[int, int]:
    """``(H, W)`` of the picture :func:`read_image` would return, from the header only; raises the same errors
    for what a header shows (missing, empty, unknown format, too large, no pixel data, one voxel, bad index)."""
    path = Path(path)
    _check_file(path)
    o = options
    if nifti.is_nifti(path):
        return nifti.size(path, max_pixels, o.frame, o.axis, o.slice)
    if dicom.is_dicom(path):
        return dicom.size(path, max_pixels, o.frame)
    return pil.displayed_size(path, max_pixels, o.frame)
