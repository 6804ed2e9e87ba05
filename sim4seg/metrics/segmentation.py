"""Segmentation metrics: exact mask counting, gIoU, cIoU and Dice (LISA's definitions).

Masks are binary: every element must be 0 or 1 (``bool`` or any integer/float dtype holding only 0 and 1);
anything else raises ``ValueError`` so probabilities or 0/255 masks are not silently miscounted. For one
(prediction, ground truth) pair, with A and B their foregrounds:

* ``inter = |A ∩ B|`` and ``union = |A ∪ B|`` are exact integer counts (``count_nonzero`` of logical
  and/or; torch tensors are counted on their own device, one host transfer per call).
* IoU of the pair is ``inter / union``; a pair with ``union == 0`` (empty prediction and empty ground
  truth) scores 1.
* Dice of the pair is ``2|A ∩ B| / (|A| + |B|) = 2 inter / (inter + union)``; empty/empty scores 1.

Over N pairs: ``gIoU`` = mean of the per-pair IoU; ``cIoU`` = ``sum(inter) / sum(union)``, defined as 1.0
when ``sum(union) == 0`` (every pair empty/empty: nothing to segment and nothing predicted);
``Dice`` = mean of the per-pair Dice. All three are fractions in [0, 1]. With N == 0 all three are NaN
(undefined, and visibly so in a table). Because all three depend only on the per-pair ``(inter, union)``,
:class:`SegmentationMeter` fed with counts gives exactly the same numbers as :func:`segmentation_scores`
fed with the masks.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

SEG_SCORE_KEYS = ("gIoU", "cIoU", "Dice")


def _torch() -> Any:
    # Only look torch up if it is already imported: a tensor cannot exist otherwise, and numpy-only callers
    # should not pay torch's import time.
    return sys.modules.get("torch")


def _is_tensor(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _check_sequence(name: str, masks: Any) -> None:
    # A single 2-D mask passed where a sequence is expected would be iterated row by row and scored as
    # H one-dimensional masks without any error; refuse arrays with fewer than 3 dimensions.
    if (isinstance(masks, np.ndarray) or _is_tensor(masks)) and masks.ndim < 3:
        raise ValueError(f"{name} must be a sequence of masks (list, or an array of shape (N, H, W)); got one "
                         f"array of shape {tuple(masks.shape)}: wrap a single mask in a list")


def _numpy_row(pred: Any, gt: Any) -> np.ndarray:
    """[inter, union, pred_area, gt_area, bad] for one numpy pair; bad: 1 = pred not binary, 2 = gt not."""
    masks, bad = [], 0
    for bit, m in ((1, np.asarray(pred)), (2, np.asarray(gt))):
        if m.dtype != np.bool_:
            # One min/max pass checks "only 0 and 1" (NaN fails both comparisons); 0/1 bytes are read as bool.
            if m.size and not (m.min() >= 0 and m.max() <= 1 and (m.dtype.kind != "f" or np.array_equal(m, m.round()))):
                bad |= bit
            m = m.view(np.bool_) if m.dtype.itemsize == 1 and m.dtype.kind in "ui" and m.flags.c_contiguous \
                else m != 0
        masks.append(m)
    pb, gb = masks
    inter, a, b = np.count_nonzero(pb & gb), np.count_nonzero(pb), np.count_nonzero(gb)
    return np.array([inter, a + b - inter, a, b, bad], dtype=np.int64)


def _torch_row(pred: Any, gt: Any) -> Any:
    """Same as :func:`_numpy_row` as an int64 tensor on the prediction's device (no host sync here)."""
    torch = _torch()
    device = pred.device if isinstance(pred, torch.Tensor) else gt.device
    # ascontiguousarray: torch cannot wrap numpy views with negative strides (e.g. from np.flip).
    p = pred if isinstance(pred, torch.Tensor) else np.ascontiguousarray(pred)
    g = gt if isinstance(gt, torch.Tensor) else np.ascontiguousarray(gt)
    p, g = torch.as_tensor(p, device=device), torch.as_tensor(g, device=device)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    bad = zero
    for bit, m in ((1, p), (2, g)):
        if m.dtype != torch.bool:
            bad = bad + bit * ((m != 0) & (m != 1)).any().to(torch.int64)
    pb, gb = p != 0, g != 0
    return torch.stack([torch.count_nonzero(pb & gb), torch.count_nonzero(pb | gb), torch.count_nonzero(pb),
                        torch.count_nonzero(gb), bad]).to(torch.int64)


def mask_counts(preds: Sequence[Any], gts: Sequence[Any]) -> np.ndarray:
    """Per pair ``[inter, union, pred_area, gt_area]`` as an ``(N, 4)`` int64 array (see module docstring).

    Raises ``ValueError`` on different lengths, a pair of different shapes (naming the index and both
    shapes) or a non-binary mask (naming the index).
    """
    _check_sequence("preds", preds)
    _check_sequence("gts", gts)
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} predicted masks but {len(gts)} ground-truth masks")
    rows: list[Any] = [None] * len(preds)
    on_device: dict[Any, list[int]] = {}
    for i, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
        ps, gs = _shape(pred), _shape(gt)
        if ps != gs:
            raise ValueError(f"mask pair {i}: prediction has shape {ps} but ground truth has shape {gs}")
        if _is_tensor(pred) or _is_tensor(gt):
            rows[i] = _torch_row(pred, gt)
            on_device.setdefault(rows[i].device, []).append(i)
        else:
            rows[i] = _numpy_row(pred, gt)
    # One device-to-host transfer per device instead of one sync per mask.
    for idx in on_device.values():
        host = _torch().stack([rows[i] for i in idx]).cpu().numpy()
        for k, i in enumerate(idx):
            rows[i] = host[k]
    out = np.stack(rows).astype(np.int64) if rows else np.zeros((0, 5), dtype=np.int64)
    for i in np.flatnonzero(out[:, 4]):
        which = {1: "prediction", 2: "ground truth", 3: "prediction and ground truth"}[int(out[i, 4])]
        raise ValueError(f"mask pair {i}: {which} is not binary (values other than 0 and 1); threshold it first")
    return out[:, :4]


def segmentation_counts(preds: Sequence[Any], gts: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair foreground intersection and union, two int64 arrays of length N."""
    c = mask_counts(preds, gts)
    return c[:, 0].copy(), c[:, 1].copy()


def segmentation_scores(preds: Sequence[Any], gts: Sequence[Any]) -> dict[str, float]:
    """``{"gIoU", "cIoU", "Dice"}`` over N mask pairs, fractions in [0, 1] (definitions: module docstring)."""
    meter = SegmentationMeter()
    meter.add_masks_batch(preds, gts)
    return meter.result()


def _as_counts(name: str, x: Any) -> np.ndarray:
    a = np.atleast_1d(np.asarray(x.cpu() if _is_tensor(x) else x))
    if a.ndim != 1:
        raise ValueError(f"{name} must be a count or a 1-D array of counts; got shape {a.shape}")
    if a.size and not np.all(np.asarray(a) == np.round(a)):
        raise ValueError(f"{name} must hold whole numbers; got {a.tolist()}")
    return a.astype(np.int64)


class SegmentationMeter:
    """Streaming gIoU/cIoU/Dice: keeps only per-mask (inter, union) counts, never masks.

    ``add`` takes counts (scalars or equal-length 1-D arrays), ``add_masks`` one mask pair,
    ``add_masks_batch`` sequences of pairs; ``result()`` gives the same numbers as
    :func:`segmentation_scores` on the same masks.
    """

    def __init__(self) -> None:
        self._inter: list[np.ndarray] = []
        self._union: list[np.ndarray] = []

    def add(self, inter: Any, union: Any, pred_area: Any = None, gt_area: Any = None) -> None:
        """Add per-mask counts; the areas, when given, are checked against inter/union and not stored."""
        i, u = _as_counts("inter", inter), _as_counts("union", union)
        if i.shape != u.shape:
            raise ValueError(f"inter has {i.size} counts but union has {u.size}")
        if np.any(i < 0) or np.any(i > u):
            raise ValueError("counts must satisfy 0 <= inter <= union")
        if (pred_area is None) != (gt_area is None):
            raise ValueError("give both pred_area and gt_area, or neither")
        if pred_area is not None:
            pa, ga = _as_counts("pred_area", pred_area), _as_counts("gt_area", gt_area)
            if pa.shape != i.shape or ga.shape != i.shape:
                raise ValueError("pred_area and gt_area must have as many counts as inter")
            # |A| + |B| = |A ∩ B| + |A ∪ B|, and the intersection fits inside both areas.
            if np.any(pa + ga != i + u) or np.any(i > pa) or np.any(i > ga):
                raise ValueError("inconsistent counts: need pred_area + gt_area == inter + union and "
                                 "inter <= each area")
        self._inter.append(i)
        self._union.append(u)

    def add_masks(self, pred: Any, gt: Any) -> None:
        """Add one (prediction, ground truth) pair of binary masks."""
        self.add_masks_batch([pred], [gt])

    def add_masks_batch(self, preds: Sequence[Any], gts: Sequence[Any]) -> None:
        """Add N pairs (lists, or (N, ...) arrays/tensors)."""
        c = mask_counts(preds, gts)
        self.add(c[:, 0], c[:, 1], c[:, 2], c[:, 3])

    def merge(self, other: SegmentationMeter) -> None:
        """Add every mask counted by ``other`` (e.g. per-subset meters into an overall one)."""
        self._inter.extend(other._inter)
        self._union.extend(other._union)

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """All per-mask (inter, union) counts so far, as two int64 arrays."""
        if not self._inter:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(self._inter), np.concatenate(self._union)

    def ious(self) -> np.ndarray:
        """Per-mask IoU (empty/empty = 1), in the order added."""
        i, u = self.counts()
        return np.where(u > 0, i / np.maximum(u, 1), 1.0)

    def __len__(self) -> int:
        return int(sum(a.size for a in self._inter))

    def result(self) -> dict[str, float]:
        i, u = self.counts()
        if i.size == 0:
            return dict.fromkeys(SEG_SCORE_KEYS, float("nan"))
        iou = np.where(u > 0, i / np.maximum(u, 1), 1.0)
        dice = np.where(u > 0, 2 * i / np.maximum(i + u, 1), 1.0)
        total_u = int(u.sum())
        ciou = int(i.sum()) / total_u if total_u > 0 else 1.0
        return {"gIoU": float(iou.mean()), "cIoU": float(ciou), "Dice": float(dice.mean())}
