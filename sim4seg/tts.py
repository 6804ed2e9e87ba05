"""Test-time scaling (paper Section 3.3): m sampled CoT paths x n perturbed region masks, one answer chosen.

The paper picks the final mask by its score against the ground truth (Eq. 13): an oracle, which no deployed
system can do. Here that is ``select_mask=oracle`` and is labelled as such in every report; ``consensus``
(highest mean IoU to the other candidates) and ``sam_score`` (SAM's predicted IoU) are deployable.
Diagnosis: ``oracle`` (correct if any path is) or ``majority`` (vote over paths, ties to the highest mean
token log-probability).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from sim4seg.metrics import mask_counts

MASK_SELECTIONS = ("oracle", "consensus", "sam_score")
DIAGNOSIS_SELECTIONS = ("oracle", "majority")


def pairwise_iou(masks: torch.Tensor) -> torch.Tensor:
    """bool [c, H, W] -> [c, c] IoU (empty/empty = 1), exact integer counts."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou_with(masks: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """bool [c, H, W] vs bool [H, W] -> [c] IoU (empty/empty = 1), from sim4seg.metrics' exact counts."""
    c = mask_counts(list(masks), [gt] * masks.shape[0])
    return torch.from_numpy(np.where(c[:, 1] > 0, c[:, 0] / np.maximum(c[:, 1], 1), 1.0))


def select_mask(masks: torch.Tensor, how: str, sam_iou: torch.Tensor | None = None,
                gt: torch.Tensor | None = None) -> int:
    """Index of the chosen candidate among bool [c, H, W]. For one image gIoU = cIoU = IoU, so the oracle's
    mean(gIoU, cIoU) is the IoU with the ground truth."""
    if masks.shape[0] == 1:
        return 0
    if how == "oracle":
        return int(iou_with(masks, gt).argmax())
    if how == "consensus":
        iou = pairwise_iou(masks)
        return int(((iou.sum(1) - 1) / (masks.shape[0] - 1)).argmax())
    if how == "sam_score":
        return int(sam_iou.argmax())
    raise ValueError(f"tts.select_mask={how!r}: use one of {', '.join(MASK_SELECTIONS)}")


def majority(labels: list[tuple[str, ...]], logprobs: list[float]) -> int:
    """Index of a path whose label set got the most votes; ties go to the path with the highest log-probability."""
    votes = Counter(labels)
    top = max(votes.values())
    return max((i for i, lab in enumerate(labels) if votes[lab] == top), key=lambda i: logprobs[i])
