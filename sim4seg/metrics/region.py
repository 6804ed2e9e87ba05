"""Does RVLS2M point at the lesion? Region diagnostics of one [SEG]'s cells against its target mask.

The cells are placed on the image by the model's own geometry (:func:`sim4seg.model.rvls2m.to_mask_prompt`
with SAM's frame the size of the image: the g x g grid spans the CLIP view, ``center_crop`` or ``pad``, so
image parts outside the view belong to no cell). With R the image pixels of the selected cells and T the
target's:

* ``region_precision`` = |R ∩ T| / |R|: share of the selected cells' area inside the target (0 when no
  selected cell shows the image);
* ``region_recall`` = |R ∩ T| / |T|: share of the target covered by the selected cells;
* ``pointing``: whether the highest-scoring cell (ties: the lower flat index, as top-k breaks them) lies inside
  the target: its centre pixel, the middle of the image pixels it covers, is a target pixel (the pointing game's
  rule for a point). A cell that shows no image pixel misses.

Defined for a non-empty target only (a negative has nothing to point at). Per sample these are fractions and a
bool; :func:`summarize_regions` averages them (pointing: share of hits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

REGION_KEYS = ("region_precision", "region_recall", "pointing")


def cells_in_image(cells: Any, hw: tuple[int, int], clip_view: str = "center_crop") -> np.ndarray:
    """The image pixels the selected cells cover: bool [g, g] -> bool [H, W] (the model's geometry)."""
    import torch

    from sim4seg.model.rvls2m import to_mask_prompt

    h, w = int(hw[0]), int(hw[1])
    c = torch.as_tensor(cells, dtype=torch.bool).cpu()
    frame = to_mask_prompt(c[None], [(h, w)], clip_view, size=max(h, w))  # scale 1: SAM's frame is the image
    return frame[0, 0, :h, :w].numpy() > 0.5


def region_diagnostics(cells: Any, scores: Any, target: Any, clip_view: str = "center_crop") -> dict[str, float]:
    """``{"region_precision", "region_recall", "pointing"}`` for one [SEG] (module docstring).

    cells: bool [g, g] (the selected cells); scores: [g, g] (their region scores; only the order is used);
    target: binary [H, W], not empty.
    """
    import torch

    from sim4seg.model.rvls2m import select_cells

    t = np.asarray(target.cpu() if hasattr(target, "cpu") else target) != 0
    if t.ndim != 2 or not t.any():
        raise ValueError(f"region diagnostics need a non-empty [H, W] target; got shape {t.shape}, "
                         f"{int(t.sum())} target pixels")
    region = cells_in_image(cells, t.shape, clip_view)
    inter = int(np.count_nonzero(region & t))
    area = int(np.count_nonzero(region))
    top = select_cells(torch.as_tensor(scores, dtype=torch.float64).cpu()[None], "topk", k=1)[0]
    ys, xs = np.nonzero(cells_in_image(top, t.shape, clip_view))
    hit = bool(ys.size) and bool(t[(ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2])
    return {"region_precision": inter / area if area else 0.0, "region_recall": inter / int(t.sum()),
            "pointing": float(hit)}


def summarize_regions(per_sample: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each of :data:`REGION_KEYS` over the samples (fractions; NaN when there are none)."""
    return {k: float(np.mean([float(d[k]) for d in per_sample])) if per_sample else math.nan for k in REGION_KEYS}
