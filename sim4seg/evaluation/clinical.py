"""Row fields beyond the paper: negatives, several findings per image, and RVLS2M's region diagnostics.

Per sample (``samples.jsonl``), in teacher and generate modes:

- ``negative``: the record has no finding; ``gave_mask``: the answer gives a mask (a ``[SEG]`` with a non-empty
  mask, :mod:`sim4seg.metrics.negatives`). A negative's ground truth is an empty mask, so the single-target rule
  scores its first ``[SEG]`` (if any) against it: empty/empty = IoU 1.
- A record with ``targets``: ``pairs`` (one per scored pair: ``seg``, ``target``, ``label`` and its counts) by the
  rule of :mod:`sim4seg.metrics.targets`; in teacher mode the reference answer names the targets in order, so
  [SEG] j carries target j's label. ``inter``/``union``/``pred_area``/``gt_area`` are then the pairs' sums and
  ``iou`` their mean; the reports score each pair.
- ``region_precision``, ``region_recall``, ``pointing`` (:mod:`sim4seg.metrics.region`): the scored [SEG]'s cells
  against its target (several targets: the mean over the matched pairs); absent for negatives and without RVLS2M.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sim4seg.data.schema import Record
from sim4seg.metrics import (
    SegmentationMeter,
    gives_mask,
    mask_counts,
    match_targets,
    negative_scores,
    pair_counts,
    region_diagnostics,
    summarize_regions,
)

Targets = list[tuple[str, torch.Tensor]]


def truth(rec: Record, masks: torch.Tensor, orig_hw: tuple[int, int]) -> tuple[torch.Tensor, Targets | None]:
    """(the mask the single-target rule scores against, bool [H, W]; the targets (label, bool [H, W]) of a record
    with several, else None). masks: the sample's [s, H, W] from the dataset (targets in record order)."""
    if rec.is_negative or masks.shape[0] == 0:
        return torch.zeros(tuple(orig_hw), dtype=torch.bool), None
    if rec.targets:
        targets = [(t["label"], masks[j].cpu() > 0.5) for j, t in enumerate(rec.targets)]
        return torch.stack([m for _, m in targets]).any(0), targets
    return masks[0].cpu() > 0.5, None


def _counts(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    inter, union, pred_area, gt_area = (int(x) for x in mask_counts([pred], [gt])[0])
    return {"inter": inter, "union": union, "iou": inter / union if union else 1.0, "pred_area": pred_area,
            "gt_area": gt_area}


def mask_fields(preds: Sequence[torch.Tensor], labels: Sequence[str | None], gt: torch.Tensor,
                targets: Targets | None) -> dict:
    """Counts of one answer's masks (bool [H, W] per [SEG], in answer order): the first against ``gt`` (single
    target), or every pair of the multi-target rule (``labels``: each [SEG]'s, see the module docstring)."""
    if targets is None:
        return _counts(preds[0] if len(preds) else torch.zeros_like(gt), gt)
    pairs = match_targets(list(labels), list(preds), targets)
    c = pair_counts(pairs, list(preds), targets)
    iou = np.where(c[:, 1] > 0, c[:, 0] / np.maximum(c[:, 1], 1), 1.0)
    return {"inter": int(c[:, 0].sum()), "union": int(c[:, 1].sum()), "iou": float(iou.mean()),
            "pred_area": int(c[:, 2].sum()), "gt_area": int(c[:, 3].sum()),
            "pairs": [{"seg": p.seg, "target": p.target, "label": p.label, "inter": int(a), "union": int(u),
                       "pred_area": int(pa), "gt_area": int(ga)} for p, (a, u, pa, ga) in zip(pairs, c, strict=True)]}


def region_fields(fields: dict, cells: torch.Tensor | None, scores: torch.Tensor | None, gt: torch.Tensor,
                  targets: Targets | None, clip_view: str) -> dict:
    """Region diagnostics of the scored [SEG]s (cells, scores: [s, g, g] in answer order, or None)."""
    if cells is None or scores is None or not cells.shape[0]:
        return {}
    if targets is None:
        return region_diagnostics(cells[0], scores[0], gt, clip_view) if gt.any() else {}
    per = [region_diagnostics(cells[p["seg"]], scores[p["seg"]], targets[p["target"]][1], clip_view)
           for p in fields["pairs"] if p["seg"] is not None and p["target"] is not None]
    return summarize_regions(per) if per else {}


def answer_fields(rec: Record, preds: Sequence[torch.Tensor], labels: Sequence[str | None], gt: torch.Tensor,
                  targets: Targets | None, cells: torch.Tensor | None, scores: torch.Tensor | None,
                  clip_view: str) -> dict:
    """Every field this module adds to a row, plus the counts (:func:`mask_fields`)."""
    fields = mask_fields(preds, labels, gt, targets)
    return {**fields, "negative": rec.is_negative, "gave_mask": gives_mask([int(p.sum()) for p in preds]),
            **region_fields(fields, cells, scores, gt, targets, clip_view)}


CLINICAL_KEYS = ("N-Acc", "FP-rate", "miss-rate", "gIoU_pos", "cIoU_pos", "region_precision", "region_recall",
                 "pointing")
CAPTION = ("gIoU/cIoU: over all samples and, for records with several targets, every scored pair; a negative's "
           "target is empty, so it scores 1 when its answer gives no mask (empty/empty = 1) and 0 when it draws one. "
           "gIoU_pos/cIoU_pos: positives only (comparable with the paper). N-Acc: negatives answered without a mask "
           "(or an empty one); FP-rate: negatives with a non-empty mask; miss-rate: positives without a mask. "
           "region_precision/region_recall: share of the RVLS2M cells' area inside the target / of the target "
           "covered by them; pointing: the top cell's centre pixel lies in the target (positives with RVLS2M). "
           "'-': no sample of that kind.")


def pair_rows(rows: Sequence[dict]) -> tuple[list[int], list[int]]:
    """(inter, union) of every scored pair: a row's ``pairs`` when it has several targets, else the row itself."""
    pairs = [q for r in rows for q in r.get("pairs", [r])]
    return [q["inter"] for q in pairs], [q["union"] for q in pairs]


def clinical_scores(rows: Sequence[dict]) -> dict[str, float | None]:
    """:data:`CLINICAL_KEYS` over scored rows, in percent (None where no sample is of the kind it needs)."""
    neg = negative_scores([bool(r.get("negative")) for r in rows], [bool(r.get("gave_mask")) for r in rows])
    meter = SegmentationMeter()
    meter.add(*pair_rows([r for r in rows if not r.get("negative")]))
    pos = meter.result() if len(meter) else {}
    regions = [r for r in rows if "pointing" in r]
    region = summarize_regions(regions) if regions else {}
    values = {**neg, "gIoU_pos": pos.get("gIoU"), "cIoU_pos": pos.get("cIoU"), **region}
    return {k: None if values.get(k) is None or np.isnan(values[k]) else 100 * float(values[k]) for k in CLINICAL_KEYS}
