"""Images with no finding: the gRefCOCO/GSVA no-target protocol.

A negative's reference answer says so in words without a ``[SEG]`` ("No abnormality is found. The diagnosis is
normal."), so "no mask" is the answer without ``[SEG]``, everywhere (training, generation, test-time scaling,
predict). A sample *gives a mask* when its answer has a ``[SEG]`` whose predicted mask is not empty; an answer
with ``[SEG]`` s whose masks are all empty gives none. Over the samples of a subset:

* ``N-Acc``: share of the negatives that give no mask (no ``[SEG]``, or only empty masks);
* ``FP-rate``: share of the negatives that give a mask (``1 - N-Acc``);
* ``miss-rate``: share of the positives that give no mask.

Each is a fraction in [0, 1], NaN when the subset has no sample of its kind. The diagnosis of a negative is
:data:`sim4seg.data.schema.NORMAL`, graded with :func:`grading_vocabulary` (the subset's labels plus "normal").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from sim4seg.data.schema import NORMAL
from sim4seg.data.vocab import Subset
from sim4seg.metrics.mentions import SEG

NEGATIVE_KEYS = ("N-Acc", "FP-rate", "miss-rate")


def n_seg(answer: str) -> int:
    """How many ``[SEG]`` the answer has (0: it answers "no finding", whatever its words)."""
    return len(SEG.findall(answer))


def gives_mask(pred_areas: Sequence[int]) -> bool:
    """Whether a sample gives a mask: any of its ``[SEG]`` masks (their foreground areas) is non-empty."""
    return any(int(a) > 0 for a in pred_areas)


def negative_scores(negative: Sequence[bool], gave_mask: Sequence[bool]) -> dict[str, float]:
    """``{"N-Acc", "FP-rate", "miss-rate"}`` (fractions, module docstring) over samples given as two flags."""
    if len(negative) != len(gave_mask):
        raise ValueError(f"{len(negative)} negative flags but {len(gave_mask)} gave-mask flags")
    neg = [bool(g) for n, g in zip(negative, gave_mask, strict=True) if n]
    pos = [bool(g) for n, g in zip(negative, gave_mask, strict=True) if not n]
    fp = sum(neg) / len(neg) if neg else math.nan
    return {"N-Acc": 1.0 - fp, "FP-rate": fp, "miss-rate": pos.count(False) / len(pos) if pos else math.nan}


def vote_gives_mask(paths_give_mask: Sequence[bool]) -> bool:
    """Test-time scaling over m answer paths: the majority decides mask or no mask. A tie gives the mask: a
    finding half the paths see is shown rather than hidden (and the deployable selection already prefers paths
    with ``[SEG]``)."""
    if not paths_give_mask:
        raise ValueError("no answer path to vote on")
    yes = sum(map(bool, paths_give_mask))
    return 2 * yes >= len(paths_give_mask)


def grading_vocabulary(subset: Subset) -> Subset:
    """The subset's vocabulary for grading answers on data with negatives: its labels plus "normal"."""
    return subset if NORMAL in subset.labels else replace(subset, labels=(*subset.labels, NORMAL))
