"""Training objective, paper Eq. 10, with LISA's normalisation of the mask terms.

L = lambda_txt * CE + lambda_mask * (lambda_bce * BCE + lambda_dice * Dice) [+ lambda_region * R]

R is ours, not the paper's (``loss.region``, off by default): a cross-entropy that trains RVLS2M's similarity map
(Eqs. 4-7) toward the target, so that its top cells mean "the finding". Per [SEG] with a non-empty target, with
P_c the softmax over image tokens (Eq. 5) pooled into the g x g cells (Eq. 7) and renormalised over the cells, and
q_c the share of cell c's image area inside the target (renormalised over the cells; cells placed on the image by
:func:`sim4seg.model.rvls2m.to_mask_prompt`, the model's own geometry): R = -sum_c q_c log P_c, averaged over
those [SEG]s. With g equal to the token grid's side (16 for CLIP ViT-L/14 at 224 px) a cell is a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sim4seg.model import rvls2m


@dataclass
class LossWeights:
    txt: float = 1.0
    mask: float = 1.0
    bce: float = 2.0
    dice: float = 0.5
    region: float = 0.0  # ours (module docstring); 0: the paper's objective


COVERAGE_SIDE = 64  # targets are measured on the image scaled to this longest side (cells are >= 4 px there at g=16)


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


def cell_coverage(targets: torch.Tensor, orig_hw: tuple[int, int], grid: int, clip_view: str) -> torch.Tensor:
    """Share of each cell's image area inside each target: bool [s, H, W] -> [s, g, g] in [0, 1].

    Measured on the image scaled to :data:`COVERAGE_SIDE` (targets area-averaged, cells placed there by
    ``to_mask_prompt`` at scale 1); cells that show no image pixel cover nothing."""
    h, w = orig_hw
    scale = min(1.0, COVERAGE_SIDE / max(h, w))
    hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(targets[:, None].float(), size=hw, mode="area")[:, 0]  # [s, h2, w2]
    onehot = torch.eye(grid * grid, dtype=torch.bool, device=targets.device).view(-1, grid, grid)
    where = rvls2m.to_mask_prompt(onehot, [hw] * grid * grid, clip_view, size=max(hw))[:, 0, :hw[0], :hw[1]]
    area = where.flatten(1).sum(1)  # [g*g]
    inside = torch.einsum("cp,sp->sc", where.flatten(1), small.flatten(1))
    return (inside / area.clamp_min(1)).view(-1, grid, grid)


def region_loss(log_cells: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], orig_hw: Sequence[tuple[int, int]],
                clip_view: str) -> torch.Tensor:
    """R of the module docstring. log_cells: per sample [s_i, g, g], the log of Eq. 7's cell means of Eq. 5's
    softmax (``rvls2m.region_scores(.., log=True)``); targets: per sample [s_i, H_i, W_i] -> scalar"""
    terms = []
    for lc, t, hw in zip(log_cells, targets, orig_hw, strict=True):
        if not lc.shape[0]:
            continue
        q = cell_coverage(t > 0.5, hw, lc.shape[-1], clip_view).flatten(1)
        keep = q.sum(1) > 0  # an empty target (or one outside the view) says nothing about where to point
        if keep.any():
            log_p = lc.flatten(1)[keep].float().log_softmax(-1)
            terms.append(-(q[keep] / q[keep].sum(1, keepdim=True) * log_p).sum(1))
    if not terms:
        return log_cells[0].new_zeros(()).float() if len(log_cells) else torch.zeros(())
    return torch.cat(terms).mean()


def total_loss(txt: torch.Tensor, bce: torch.Tensor, dice: torch.Tensor, w: LossWeights,
               region: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    mask = w.bce * bce + w.dice * dice
    out = {"txt": txt, "bce": bce, "dice": dice, "mask": mask, "total": w.txt * txt + w.mask * mask}
    if region is not None:
        out["region"] = region
        out["total"] = out["total"] + w.region * region
    return out
