"""PNG, JPEG, TIFF, BMP (and whatever else Pillow decodes), with the EXIF orientation applied.

EXIF orientation is applied here and only here (images and masks both come through :func:`open_image`), so a
sideways-stored JPEG is seen as it is displayed by every converter, dataset and prediction.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sim4seg.data.readers import window as win
from sim4seg.data.schema import RecordError

EXIF_ORIENTATION = 0x0112
TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that swap height and width (90 or 270 degree turns)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
FORMATS = "PNG, JPEG, TIFF, BMP, DICOM (.dcm) or NIfTI (.nii, .nii.gz)"


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored, also when absent or invalid)."""
    value = img.getexif().get(EXIF_ORIENTATION, 1)
    return value if value in range(1, 9) else 1


def open_image(path: Path, max_pixels: int, frame: int = 0, decode: bool = True) -> Image.Image:
    """Open ``path`` (page ``frame`` of a multi-page file), refuse more than ``max_pixels``, and turn it upright
    per its EXIF orientation. ``decode=False`` reads the header only: the size is then the stored one (see
    :func:`displayed_size`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > max_pixels:
                raise RecordError(f"{path}: {w}x{h} = {w * h} pixels exceeds the limit {max_pixels} "
                                  "(data.max_pixels, --max-pixels); raise the limit if the file is trusted")
            pages = getattr(img, "n_frames", 1)
            if not 0 <= frame < pages:
                raise RecordError(f"{path}: frame {frame} does not exist; the file has {pages} "
                                  f"(frame 0..{pages - 1})")
            if frame:
                img.seek(frame)
            if not decode:
                return img
            img.load()
            upright = ImageOps.exif_transpose(img)
            upright.format = img.format  # the turned copy loses it; readers of masks and converters use it
            return upright
    except RecordError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RecordError(f"{path}: not a readable image ({type(e).__name__}: {e}); supported: {FORMATS}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise RecordError(f"{path}: corrupt or truncated image ({e})") from None


def displayed_size(path: Path, max_pixels: int, frame: int = 0) -> tuple[int, int]:
    """``(H, W)`` as displayed (EXIF turns applied), from the header."""
    img = open_image(path, max_pixels, frame, decode=False)
    w, h = img.size
    return (w, h) if exif_orientation(img) in TRANSPOSING else (h, w)


def read(path: Path, max_pixels: int, frame: int, window: win.Window) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``: 16-bit, 32-bit and float pictures windowed (percentiles unless ``window`` says
    otherwise), palette/RGBA composited on black, grey expanded to three channels."""
    img = open_image(path, max_pixels, frame)
    if img.mode in HIGH_BIT_MODES:
        return win.grey_to_rgb(win.apply(np.asarray(img), window, win.Window("percentile")))
    if img.mode == "RGBA" or (img.mode == "P" and "transparency" in img.info) or img.mode in ("LA", "PA"):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA"))
    rgb = np.asarray(img.convert("RGB"))
    if window.kind == "auto":  # 8-bit pictures are shown as stored
        return rgb
    return win.grey_to_rgb(win.apply(np.asarray(img.convert("L")), window, window))
