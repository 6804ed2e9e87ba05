"""Several findings per image: which target each ``[SEG]`` of an answer is scored against.

A record with several findings lists them as ``targets`` (label, mask), and its answer names each finding with
its own ``[SEG]`` ("The findings are effusion [SEG] and nodule [SEG]."). The rule, in three steps:

1. Label of each ``[SEG]``: the last label its sentence names before it; if none, the first label its sentence
   names after it (before the next ``[SEG]``); else none. Sentences end at ``. ! ?`` followed by a space, or at
   a newline. Labels are found by the diagnosis rule's matching (:func:`sim4seg.metrics.label_matches`:
   synonyms, inflections, word order, "non-malignant" for benign); a negated mention ("no effusion") names
   nothing, a hedged one ("possible nodule") does.
2. Pairing, per label: the ``[SEG]`` s and the targets of that label are paired greedily by IoU, highest first
   (ties: the earlier ``[SEG]``, then the earlier target), so two lesions of one label may be segmented in any
   order.
3. What is left over counts as empty masks: a ``[SEG]`` without a label or without a free target of its label
   is scored against an empty target, a target no ``[SEG]`` took against an empty prediction. Every pair is one
   entry of gIoU (its IoU; empty/empty = 1) and of cIoU (its counts).

Records without ``targets`` keep the single-target rule of the evaluation: the first ``[SEG]`` against the
mask (a second one is flagged ``multi_seg``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim4seg.data.vocab import Subset
from sim4seg.metrics.diagnosis import label_matches
from sim4seg.metrics.mentions import SEG
from sim4seg.metrics.segmentation import mask_counts

_SENTENCE = re.compile(r"[^\n]*?(?:[.!?](?=\s|$)|\n|$)")


@dataclass(frozen=True)
class TargetPair:
    """One scored pair: ``seg`` indexes the answer's [SEG]s (None: a target nothing took), ``target`` the
    record's targets (None: a [SEG] scored against an empty mask); ``label`` is the [SEG]'s or the target's."""

    seg: int | None
    target: int | None
    label: str | None


def _sentences(answer: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``answer`` (the diagnosis rule's sentence ends)."""
    spans, pos = [], 0
    while pos < len(answer):
        m = _SENTENCE.match(answer, pos)
        end = max(m.end(), pos + 1)
        spans.append((pos, end))
        pos = end
    return spans


def _named(text: str, vocabulary: Subset) -> list[str]:
    """Labels ``text`` names (stated or hedged, not negated), in reading order."""
    matches = [m for m in label_matches(text, vocabulary, fmt="cot") if m.status != "negated"]
    return [m.label for m in sorted(matches, key=lambda m: (m.sentence, m.start))]


def seg_labels(answer: str, vocabulary: Subset) -> list[str | None]:
    """The label of each ``[SEG]`` of ``answer``, in answer order (step 1 of the module docstring)."""
    segs = list(SEG.finditer(answer))
    out: list[str | None] = []
    for i, seg in enumerate(segs):
        start, end = next(s for s in _sentences(answer) if s[0] <= seg.start() < s[1])
        before = _named(answer[start:seg.start()], vocabulary)
        stop = min([s.start() for s in segs[i + 1:] if s.start() < end] + [end])
        after = _named(answer[seg.end():stop], vocabulary)
        out.append(before[-1] if before else after[0] if after else None)
    return out


def match_targets(labels: Sequence[str | None], preds: Sequence[Any], targets: Sequence[tuple[str, Any]],
                  ) -> list[TargetPair]:
    """Pair the [SEG]s (their labels and predicted masks) with the targets (label, mask) (steps 2 and 3).

    Masks are binary [H, W] (numpy or torch). Returns matched pairs in [SEG] order, then unmatched [SEG]s, then
    targets no [SEG] took.
    """
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} [SEG] labels but {len(preds)} predicted masks")
    pairs: list[TargetPair] = []
    taken_s: set[int] = set()
    taken_t: set[int] = set()
    for label in dict.fromkeys(x for x in labels if x is not None):
        ss = [i for i, x in enumerate(labels) if x == label]
        ts = [j for j, (x, _) in enumerate(targets) if x == label]
        if not ts:
            continue
        c = mask_counts([preds[i] for i in ss for _ in ts], [targets[j][1] for _ in ss for j in ts])
        iou = np.where(c[:, 1] > 0, c[:, 0] / np.maximum(c[:, 1], 1), 1.0).reshape(len(ss), len(ts))
        for a, b in sorted(np.ndindex(iou.shape), key=lambda ab: (-iou[ab], ab)):
            if ss[a] not in taken_s and ts[b] not in taken_t:
                taken_s.add(ss[a])
                taken_t.add(ts[b])
                pairs.append(TargetPair(ss[a], ts[b], label))
    pairs.sort(key=lambda p: p.seg)
    pairs += [TargetPair(i, None, x) for i, x in enumerate(labels) if i not in taken_s]
    pairs += [TargetPair(None, j, x) for j, (x, _) in enumerate(targets) if j not in taken_t]
    return pairs


def pair_counts(pairs: Sequence[TargetPair], preds: Sequence[Any], targets: Sequence[tuple[str, Any]],
                ) -> np.ndarray:
    """Per pair ``[inter, union, pred_area, gt_area]`` (``(P, 4)`` int64), an empty mask for the missing side."""
    if not pairs:
        return np.zeros((0, 4), dtype=np.int64)
    like = preds[0] if len(preds) else targets[0][1]
    empty = np.zeros(tuple(like.shape), dtype=bool)
    return mask_counts([empty if p.seg is None else preds[p.seg] for p in pairs],
                       [empty if p.target is None else targets[p.target][1] for p in pairs])


def score_targets(answer: str, preds: Sequence[Any], targets: Sequence[tuple[str, Any]], vocabulary: Subset,
                  ) -> tuple[list[TargetPair], np.ndarray]:
    """The whole rule for one multi-target answer: its pairs and their counts (feed them to a
    :class:`sim4seg.metrics.SegmentationMeter`). ``preds``: one mask per [SEG], in answer order."""
    pairs = match_targets(seg_labels(answer, vocabulary), preds, targets)
    return pairs, pair_counts(pairs, preds, targets)
