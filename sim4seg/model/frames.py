"""SAM's frame per decoder family: where the image lies in the S x S encoder input and in the mask prompt.

``letterbox`` (segment_anything's SAM): the longest side resized to S, padded bottom/right
(:meth:`sim4seg.model.processor.Processor.sam`, :func:`sim4seg.model.rvls2m.to_mask_prompt`, and
``Sam.postprocess_masks`` crops the padding). ``stretch`` (SAM2): the image resized to S x S without keeping the
aspect ratio, as ``SAM2Transforms`` does (``Resize((S, S))`` of the image tensor: antialiased bilinear) and
transformers' ``Sam2ImageProcessor``; the low-res masks go straight back to H x W (``Sam2.postprocess_masks``).
For a square image the two frames are the same. A decoder family names its frame in a ``frame`` attribute.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sim4seg.model import rvls2m

FRAMES = ("letterbox", "stretch")


def frame_of(sam: nn.Module) -> str:
    """The frame a decoder family expects: its ``frame`` attribute; segment_anything's ``Sam`` has none."""
    return getattr(sam, "frame", "letterbox")


def stretch_image(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]
                  ) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 [H, W, 3] -> normalised [3, S, S] of the whole image, and the (S, S) it fills"""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None]
    x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x, (size, size)


def stretch_mask_prompt(cells: torch.Tensor, orig_hw: Sequence[tuple[int, int]], clip_view: str = "center_crop",
                        size: int = 256, on: float = 1.0, off: float = 0.0) -> torch.Tensor:
    """:func:`sim4seg.model.rvls2m.to_mask_prompt` for the stretch frame: prompt pixel (i, j) shows image point
    ((i + 0.5) H / size, (j + 0.5) W / size); each pixel takes the cell of the CLIP view its centre falls in, and
    pixels outside the view stay ``off``. cells: bool [B, g, g]; orig_hw: B pairs -> float [B, 1, size, size]"""
    b, g, _ = cells.shape
    if len(orig_hw) != b:
        raise ValueError(f"stretch_mask_prompt: {b} cell maps but {len(orig_hw)} image sizes")
    hw = torch.tensor(orig_hw, dtype=torch.float64, device=cells.device)
    h, w = hw[:, 0], hw[:, 1]
    top, left, vh, vw = rvls2m.view_box(hw, clip_view)
    rows, rvalid = rvls2m._axis_cells(h, top, vh, size / h, size, g)  # per-axis scale: no padding
    cols, cvalid = rvls2m._axis_cells(w, left, vw, size / w, size, g)
    picked = cells[torch.arange(b, device=cells.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    out = torch.full((b, 1, size, size), off, dtype=torch.float32, device=cells.device)
    out[:, 0][picked & rvalid[:, :, None] & cvalid[:, None, :]] = on
    return out


def mask_prompt(frame: str, cells: torch.Tensor, orig_hw: Sequence[tuple[int, int]], clip_view: str, size: int,
                on: float = 1.0, off: float = 0.0) -> torch.Tensor:
    """RVLS2M's dense mask prompt in ``frame``: [B, g, g] cells -> [B, 1, size, size]"""
    place = stretch_mask_prompt if frame == "stretch" else rvls2m.to_mask_prompt
    return place(cells, orig_hw, clip_view, size, on, off)
