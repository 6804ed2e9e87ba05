"""DICOM through pydicom: one frame, Modality LUT (Rescale Slope/Intercept), VOI window, MONOCHROME1 inverted.

Order of operations (DICOM PS3.3 C.11): stored values -> Modality LUT (``apply_modality_lut``: slope and
intercept, e.g. Hounsfield units for CT) -> VOI: the file's first Window Center/Width, a modality preset when it
has none (CT soft tissue; 8-bit data as stored; other data by percentiles), or the window asked for ->
0..255, inverted for MONOCHROME1 (where a high value is dark). Colour images (RGB, YBR, palette) are shown as
colour. Compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg and its libjpeg/openjpeg
plugins, Pillow); when none is installed the error names what to install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sim4seg.data.readers import window as win
from sim4seg.data.schema import RecordError

SUFFIXES = (".dcm", ".dicom")
DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"


def is_dicom(path: Path) -> bool:
    """A ``.dcm``/``.dicom`` name, or the ``DICM`` marker after the 128-byte preamble."""
    if path.suffix.lower() in SUFFIXES:
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def _header(path: Path, max_pixels: int, frame: int):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # Large values (the pixel data) stay on disk until a frame is decoded.
        ds = pydicom.dcmread(path, defer_size="64 KB", force=path.suffix.lower() in SUFFIXES)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise RecordError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = getattr(ds.get("SOPClassUID"), "name", None) or ds.get("Modality") or "unknown"
        raise RecordError(f"{path}: DICOM file has no pixel data (it is a {kind} object); pass an image instance")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols == 0:
        raise RecordError(f"{path}: DICOM image has Rows x Columns = {rows}x{cols}")
    if rows * cols > max_pixels:
        raise RecordError(f"{path}: {cols}x{rows} = {rows * cols} pixels exceeds the limit {max_pixels} "
                          "(data.max_pixels, --max-pixels); raise the limit if the file is trusted")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise RecordError(f"{path}: frame {frame} does not exist; the file has {frames} (frame 0..{frames - 1})")
    return ds


def size(path: Path, max_pixels: int, frame: int = 0) -> tuple[int, int]:
    """``(H, W)`` from the header, after the same checks as :func:`read`."""
    ds = _header(path, max_pixels, frame)
    return int(ds.Rows), int(ds.Columns)


def _decode(path: Path, ds, frame: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(path, index=frame)  # decodes this frame only; YBR becomes RGB
    except (RuntimeError, NotImplementedError) as e:
        ts = ds.file_meta.get("TransferSyntaxUID")
        if "missing dependencies" in str(e) or "no pixel data decoders" in str(e).lower():
            raise RecordError(f"{path}: its pixel data is compressed as {getattr(ts, 'name', ts)} and no installed "
                              f"decoder reads it; install one with `{DECODERS}`") from None
        why = " ".join(line.strip() for line in str(e).splitlines())[:300]
        raise RecordError(f"{path}: cannot decode its {getattr(ts, 'name', ts)} pixel data ({why})") from None
    except (ValueError, OSError, EOFError, KeyError, AttributeError) as e:
        raise RecordError(f"{path}: corrupt DICOM pixel data ({type(e).__name__}: {e})") from None


def _first(value) -> float:
    """The first of a multi-valued Window Center/Width (the file's preferred view)."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue) else value)


def default_window(ds) -> win.Window:
    """The window when none is asked for: the file's first Window Center/Width, else by modality."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return win.Window("linear", _first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0))
    if ds.get("Modality") == "CT":
        return win.Window("linear", *win.CT_PRESETS["ct_soft_tissue"])
    if int(ds.get("BitsStored", 8)) <= 8 and "RescaleSlope" not in ds:
        return win.Window("linear", 128.0, 256.0)  # the identity on 0..255: 8-bit data shown as stored
    return win.Window("percentile")


def read(path: Path, max_pixels: int, frame: int, window: win.Window) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of frame ``frame``."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    ds = _header(path, max_pixels, frame)
    arr = _decode(path, ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return np.rint(arr.astype(np.float64) * 255.0 / (2**bits - 1)).astype(np.uint8)
    if arr.ndim == 3:  # RGB (YBR already converted by pydicom)
        bits = int(ds.get("BitsStored", 8))
        return arr.astype(np.uint8) if bits <= 8 else np.rint(arr / (2**bits - 1) * 255.0).astype(np.uint8)
    grey = win.apply(apply_modality_lut(arr, ds), window, default_window(ds))
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return win.grey_to_rgb(grey)
