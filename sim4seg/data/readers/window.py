"""Intensity windowing: from stored values (Hounsfield units, MR signal, 16-bit counts) to 0..255 display grey.

Windows follow DICOM's VOI LUT rule (PS3.3 C.11.2.1.2, computed by pydicom's ``apply_windowing``); a window
named by preset or given as ``C,W`` is applied the same way. ``percentile`` maps the 0.5th..99.5th percentile
of the picture linearly onto 0..255 (the default for MR, 16-bit PNG/TIFF and floating-point images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim4seg.errors import UserError

# (center, width) in Hounsfield units: the usual CT presets.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "ct_soft_tissue": (40.0, 400.0),
    "ct_lung": (-600.0, 1500.0),
    "ct_bone": (400.0, 1800.0),
}
PERCENTILES = (0.5, 99.5)
WINDOW_CHOICES = ("auto", *CT_PRESETS, "percentile")


@dataclass(frozen=True)
class Window:
    """A parsed window setting. ``kind``: auto (the file's own window, else the format's default), percentile,
    or linear (``center``/``width``, from a preset or ``C,W``)."""

    kind: str
    center: float = 0.0
    width: float = 1.0


def parse_window(spec: str) -> Window:
    """``auto``, ``percentile``, a CT preset name or ``C,W`` (e.g. ``40,400``) -> :class:`Window`."""
    spec = spec.strip().lower()
    if spec in ("auto", "percentile"):
        return Window(spec)
    if spec in CT_PRESETS:
        return Window("linear", *CT_PRESETS[spec])
    try:
        center, width = (float(x) for x in spec.split(","))
    except ValueError:
        raise UserError(f"window={spec!r}: use one of {', '.join(WINDOW_CHOICES)} or CENTER,WIDTH "
                        "(e.g. 40,400)") from None
    if not width >= 1 or not np.isfinite(center):
        raise UserError(f"window={spec!r}: the width must be at least 1 and the center finite")
    return Window("linear", center, width)


def linear(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing onto 0..255 (pydicom's ``apply_windowing`` on an 8-bit output range).

    values: any real array (e.g. Hounsfield units) -> uint8 of the same shape
    """
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    # pydicom scales the window onto the stored range of the dataset it is given: describe an unsigned 8-bit one.
    view = Dataset()
    view.PhotometricInterpretation = "MONOCHROME2"
    view.BitsStored, view.PixelRepresentation = 8, 0
    view.WindowCenter, view.WindowWidth, view.VOILUTFunction = center, width, function
    return np.clip(np.rint(apply_windowing(np.asarray(values, np.float64), view)), 0, 255).astype(np.uint8)


def percentile(values: np.ndarray, lo: float = PERCENTILES[0], hi: float = PERCENTILES[1]) -> np.ndarray:
    """The ``lo``..``hi`` percentiles of the finite values mapped linearly onto 0..255 (clipped); a constant
    picture is black. values: any real array -> uint8 of the same shape"""
    a = np.asarray(values, np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, np.uint8)
    p0, p1 = np.percentile(finite, (lo, hi))
    if p1 <= p0:
        return np.zeros(a.shape, np.uint8)
    y = (np.nan_to_num(a, nan=p0, posinf=p1, neginf=p0) - p0) / (p1 - p0) * 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def apply(values: np.ndarray, window: Window, default: Window) -> np.ndarray:
    """``window``, or ``default`` when it is ``auto``; values -> uint8 of the same shape"""
    w = default if window.kind == "auto" else window
    if w.kind == "percentile":
        return percentile(values)
    if w.kind == "linear":
        return linear(values, w.center, w.width)
    raise ValueError(f"window kind {w.kind!r} has no default here")


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """uint8 [H, W] -> uint8 [H, W, 3]"""
    return np.repeat(grey[..., None], 3, axis=2)
