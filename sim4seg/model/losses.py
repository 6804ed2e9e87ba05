"""Training objective, paper Eq. 10, with LISA's normalisation of the mask terms.

L = lambda_txt * CE + lambda_mask * (lambda_bce * BCE + lambda_dice * Dice)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    txt: float = 1.0
    mask: float = 1.0
    bce: float = 2.0
    dice: float = 0.5


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with logits, averaged over pixels per mask, summed over masks. [m, H, W] -> scalar"""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1).mean(1).sum()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """LISA's Dice on sigmoid probabilities, with the 1/scale factor that keeps sums of large masks well-conditioned,
    summed over masks. [m, H, W] -> scalar"""
    p = logits.float().sigmoid().flatten(1)
    t = target.float().flatten(1)
    num = 2 * (p / scale * t).sum(-1)
    den = (p / scale).sum(-1) + (t / scale).sum(-1)
    return (1 - (num + eps) / (den + eps)).sum()


def mask_losses(pred: list[torch.Tensor], gt: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """BCE and Dice averaged over all masks of the batch; masks can differ in size between samples.

    pred, gt: per sample [m_i, H_i, W_i] -> (bce, dice, number of masks)
    """
    n = sum(p.shape[0] for p in pred)
    zero = pred[0].new_zeros(()) if pred else torch.zeros(())
    if n == 0:
        return zero.float(), zero.float(), 0
    bce = sum((bce_loss(p, g) for p, g in zip(pred, gt) if p.shape[0]), zero.float())
    dice = sum((dice_loss(p, g) for p, g in zip(pred, gt) if p.shape[0]), zero.float())
    return bce / (n + 1e-8), dice / (n + 1e-8), n


def total_loss(txt: torch.Tensor, bce: torch.Tensor, dice: torch.Tensor, w: LossWeights) -> dict[str, torch.Tensor]:
    mask = w.bce * bce + w.dice * dice
    return {"txt": txt, "bce": bce, "dice": dice, "mask": mask, "total": w.txt * txt + w.mask * mask}
