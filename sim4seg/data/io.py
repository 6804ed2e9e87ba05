"""Decoding images and masks with checks: every failure is a :class:`RecordError` naming the file and reason."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sim4seg.data.schema import RecordError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger files are refused as possible decompression bombs


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as RGB uint8 ``[H, W, 3]``. 16-bit, palette, RGBA and grayscale inputs are converted."""
    path = Path(path)
    img = _open(path, max_pixels)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi == lo else (a - lo) / (hi - lo) * 255.0
        return np.repeat(a.round().astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "RGBA" or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("RGB"))


def load_mask(path: str | Path, hw: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a single-channel 0/255 mask as bool ``[H, W]``; refuse other values, channels or a size != ``hw``."""
    path = Path(path)
    img = _open(path, max_pixels)
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


def image_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(H, W)`` from the header only."""
    w, h = _open(Path(path), max_pixels, decode=False).size
    return h, w


def _open(path: Path, max_pixels: int, decode: bool = True) -> Image.Image:
    if not path.exists():
        raise RecordError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise RecordError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > max_pixels:
                raise RecordError(f"{path}: {w}x{h} = {w * h} pixels exceeds the limit {max_pixels} "
                                  "(data.max_pixels); raise the limit if the file is trusted")
            if decode:
                img.load()
        return img
    except RecordError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RecordError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RecordError(f"{path}: corrupt or truncated image ({e})") from None
