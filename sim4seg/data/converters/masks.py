"""Masks from native annotations: given mask files (checked binary), polygons (pycocotools), boxes (OpenCV)."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from sim4seg.data.converters.base import ConversionProblem, Item
from sim4seg.data.io import DEFAULT_MAX_PIXELS
from sim4seg.data.readers.pil import open_image
from sim4seg.data.schema import RecordError


def read_given_mask(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """A native mask file as bool ``[H, W]``.

    JPEG masks are thresholded at 128 (compression noise is expected there). Any other format must already be
    binary (0/255 or 0/1; colour masks use their brightest channel); stray values mean a damaged or non-binary
    mask and are refused, as is a size different from the image's.
    """
    if not path.exists():
        raise ConversionProblem(f"{path}: mask file not found")
    try:
        with open_image(path, DEFAULT_MAX_PIXELS) as im:  # the one reader: EXIF orientation applied, as to images
            fmt = im.format
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im)
            else:
                has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
                rgba = np.asarray(im.convert("RGBA"))
                a = rgba[..., :3].max(axis=2)
                if has_alpha:
                    a = np.where(rgba[..., 3] > 0, a, 0)  # transparent pixels are background
    except RecordError as e:  # unreadable, or over the pixel limit: the reader's own line
        raise ConversionProblem(str(e)) from None
    except Exception as e:  # PIL raises many types for damaged files
        raise ConversionProblem(f"{path}: unreadable mask ({type(e).__name__}: {e})") from None
    if a.shape != tuple(hw):
        raise ConversionProblem(f"{path}: mask is {a.shape[0]}x{a.shape[1]} but its image is {hw[0]}x{hw[1]} (HxW)")
    if fmt == "JPEG":
        return a >= 128
    values = np.unique(a)
    for on in (255, 1, 65535):
        if np.isin(values, (0, on)).all():
            return a == on
    shown = values[:6].tolist()
    raise ConversionProblem(f"{path}: {fmt} mask has values {shown}{'...' if len(values) > 6 else ''} "
                            "(JPEG-like noise); expected a binary 0/255 mask")


def polygons_to_mask(polygons: list[list[float]], hw: tuple[int, int]) -> np.ndarray:
    """Union of polygons in COCO pixel coordinates, rasterised by pycocotools (parts outside the image clipped)."""
    h, w = hw
    polys = [list(map(float, p)) for p in polygons if len(p) >= 6]
    if not polys:
        return np.zeros((h, w), bool)
    rles = coco_mask.frPyObjects(polys, h, w)
    with warnings.catch_warnings():  # pycocotools' decode trips a NumPy 2 DeprecationWarning (copy=False)
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def boxes_to_mask(boxes: list[tuple[float, float, float, float]], hw: tuple[int, int]) -> np.ndarray:
    """Union of filled boxes: pixels ``round(x0) .. round(x1)-1`` (at least one), clipped, drawn by OpenCV."""
    h, w = hw
    m = np.zeros((h, w), np.uint8)
    for x0, y0, x1, y1 in boxes:
        c0, r0 = int(round(min(x0, x1))), int(round(min(y0, y1)))
        c1, r1 = max(int(round(max(x0, x1))), c0 + 1), max(int(round(max(y0, y1))), r0 + 1)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        if c1 > c0 and r1 > r0:
            cv2.rectangle(m, (c0, r0), (c1 - 1, r1 - 1), 255, thickness=-1)
    return m > 0


def build_mask(item: Item, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    coords = [v for p in item.polygons for v in p] + [v for b in item.boxes for v in b]
    if coords and not np.isfinite(np.asarray(coords, float)).all():
        raise ConversionProblem(f"{item.image}: its annotation has a non-finite coordinate (NaN or inf)")
    mask = np.zeros((h, w), bool)
    for f in item.mask_files:
        mask |= read_given_mask(f, hw)
    if item.polygons:
        polys = item.polygons
        if item.normalised:
            polys = [[v * (w if i % 2 == 0 else h) for i, v in enumerate(p)] for p in polys]
        mask |= polygons_to_mask(polys, hw)
    if item.boxes:
        boxes = item.boxes
        if item.normalised:
            boxes = [(x0 * w, y0 * h, x1 * w, y1 * h) for x0, y0, x1, y1 in boxes]
        mask |= boxes_to_mask(boxes, hw)
    return mask
