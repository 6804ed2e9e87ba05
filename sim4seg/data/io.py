"""Decoding images and masks with checks: every failure is a :class:`RecordError` naming the file and reason.

Images of every supported format go through :mod:`sim4seg.data.readers`; masks are single-channel 0/255
pictures. Both are turned upright by their EXIF orientation in one place (``readers.pil.open_image``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sim4seg.data.readers import DEFAULT, ReadOptions, read_image, read_size
from sim4seg.data.readers.pil import TRANSPOSING, exif_orientation, open_image
from sim4seg.data.schema import RecordError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger files are refused as possible decompression bombs


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               options: ReadOptions = DEFAULT) -> np.ndarray:
    """Read an image as RGB uint8 ``[H, W, 3]``: PNG/JPEG/TIFF/BMP (EXIF orientation applied; 16-bit, palette,
    RGBA and grey converted), DICOM and NIfTI (one frame or slice, windowed per ``options``)."""
    return read_image(path, max_pixels, options)


def load_mask(path: str | Path, hw: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a single-channel 0/255 mask as bool ``[H, W]``; refuse other values, channels or a size != ``hw``."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise RecordError(f"{path}: file is empty (0 bytes)")
    img = open_image(path, max_pixels)
    if img.mode not in ("L", "1", "P"):
        raise RecordError(f"{path}: mask has mode {img.mode}; expected a single-channel 0/255 PNG")
    a = np.asarray(img.convert("L"))
    if hw is not None and a.shape != tuple(hw):
        raise RecordError(f"{path}: mask is {a.shape[0]}x{a.shape[1]} but its image is {hw[0]}x{hw[1]} (HxW)")
    if ((a != 0) & (a != 255)).any():  # cheap check first; the distinct values only for the message
        values = np.unique(a)
        raise RecordError(f"{path}: mask has values {values[:6].tolist()}{'...' if len(values) > 6 else ''}; "
                          "expected only 0 and 255 (re-save it binarised)")
    return a == 255


def image_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               options: ReadOptions = DEFAULT) -> tuple[int, int]:
    """``(H, W)`` as :func:`load_image` returns it, from the header only."""
    return read_size(path, max_pixels, options)


def exif_turn(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> int | None:
    """The EXIF orientation of a Pillow-readable file when it turns the picture by 90 or 270 degrees (so the
    displayed size is the stored one transposed), else None."""
    try:
        o = exif_orientation(open_image(Path(path), max_pixels, decode=False))
    except RecordError:
        return None
    return o if o in TRANSPOSING else None
