"""NIfTI through nibabel: one slice of a volume, turned to the usual radiological display.

The volume is first reoriented to RAS+ (``nibabel.as_closest_canonical``: a growing index 0 goes towards the
patient's Right, 1 Anterior, 2 Superior), so ``axis`` means the same plane whatever the file's storage order:
0 sagittal, 1 coronal, 2 axial (the default, "the last axis"). The slice is shown as radiology viewers do: superior (axial: anterior) at the top, the patient's right on the
image's left (sagittal: anterior on the left). Slice indices count in RAS+ order (axial: from the feet up).
4-D files take volume ``frame``. Windowing: a CT preset or ``C,W`` in the file's units, else by default CT
soft tissue when the slice holds values at or below -500 (air in Hounsfield units), otherwise percentiles (MR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sim4seg.data.readers import window as win
from sim4seg.data.schema import RecordError

SUFFIXES = (".nii", ".nii.gz")
HU_AIR = -500.0  # a slice reaching this is taken to be CT in Hounsfield units


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def _load(path: Path):
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as e:  # nibabel and gzip raise many types for a damaged file
        raise RecordError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if int(np.prod(img.shape)) <= 1:
        raise RecordError(f"{path}: NIfTI volume has a single voxel (shape {img.shape}); there is no image to show")
    if len(img.shape) > 4 and int(np.prod(img.shape[4:])) > 1:
        raise RecordError(f"{path}: NIfTI data of shape {img.shape} has more than 4 dimensions")
    return img


def _plane(path: Path, img, axis: int, index: int | None, frame: int,
           max_pixels: int) -> tuple[int, int, tuple[int, int]]:
    """Validated axis (0..2) and slice index, and the displayed (H, W) of that slice."""
    import nibabel as nib

    shape = tuple(img.shape[:3]) + (1,) * (3 - len(img.shape[:3]))
    frames = img.shape[3] if len(img.shape) > 3 else 1
    if not 0 <= frame < frames:
        raise RecordError(f"{path}: volume {frame} does not exist; the file has {frames} (frame 0..{frames - 1})")
    if axis not in (-3, -2, -1, 0, 1, 2):
        raise RecordError(f"{path}: axis {axis} is not one of 0 (sagittal), 1 (coronal), 2 (axial)")
    axis %= 3
    canonical = [0, 0, 0]
    for stored, (to, _) in enumerate(nib.io_orientation(img.affine)):
        canonical[int(to)] = shape[stored]
    n = canonical[axis]
    index = n // 2 if index is None else index
    if not 0 <= index < n:
        raise RecordError(f"{path}: slice {index} does not exist along axis {axis}; it has {n} (slice 0..{n - 1})")
    w, h = (c for i, c in enumerate(canonical) if i != axis)
    if h * w > max_pixels:
        raise RecordError(f"{path}: a {w}x{h} slice exceeds the limit of {max_pixels} pixels (data.max_pixels, "
                          "--max-pixels)")
    return axis, index, (h, w)


def size(path: Path, max_pixels: int, frame: int = 0, axis: int = -1, index: int | None = None) -> tuple[int, int]:
    """Displayed ``(H, W)`` of the slice, from the header, after the same checks as :func:`read`."""
    return _plane(path, _load(path), axis, index, frame, max_pixels)[2]


def read(path: Path, max_pixels: int, frame: int, axis: int, index: int | None, window: win.Window) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of one slice."""
    import nibabel as nib

    img = _load(path)
    axis, index, _ = _plane(path, img, axis, index, frame, max_pixels)
    try:
        if len(img.shape) > 3:
            img = img.slicer[(slice(None),) * 3 + (frame,)]
        if len(img.shape) < 3:
            img = nib.Nifti1Image(np.asanyarray(img.dataobj).reshape(img.shape + (1,) * (3 - len(img.shape))),
                                  img.affine)
        canonical = nib.as_closest_canonical(img)
        # Only this slice is read (and scaled by scl_slope/scl_inter) from disk.
        plane = np.asarray(canonical.dataobj[(slice(None),) * axis + (index,)], dtype=np.float64)
    except Exception as e:
        raise RecordError(f"{path}: corrupt NIfTI data ({type(e).__name__}: {e})") from None
    # plane [a, b] with a, b the remaining RAS+ axes in order: b runs up the screen, a runs to the screen's left.
    display = plane.T[::-1, ::-1]
    finite = display[np.isfinite(display)]
    ct = finite.size > 0 and float(finite.min()) <= HU_AIR
    default = win.Window("linear", *win.CT_PRESETS["ct_soft_tissue"]) if ct else win.Window("percentile")
    return win.grey_to_rgb(win.apply(display, window, default))
