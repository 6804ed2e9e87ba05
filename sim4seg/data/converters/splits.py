"""Seeded splits: deterministic shuffles cut into the paper's Table 1 sizes (scaled for partial downloads)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping

from sim4seg.data.converters.base import Item

LEFT_OUT = "_left_out"  # pseudo-split of a seeded split: in the official set but not in the paper's Table 1


def seeded_split(ids: Iterable[str], counts: Mapping[str, int], seed: int, *, total: int | None = None,
                 salt: str = "") -> dict[str, str]:
    """Assign ids to splits by a deterministic seeded shuffle.

    ``counts`` are the Table 1 sizes for the complete official set of ``total`` ids (default: their sum; when
    ``total`` is larger, the rest go to :data:`LEFT_OUT`). With exactly ``total`` ids the counts are met exactly;
    with any other number they are scaled proportionally (largest remainder). Ids are sorted before shuffling, so
    the result does not depend on the order files were listed in.
    """
    ids = sorted(set(ids))
    parts = dict(counts)
    full = sum(parts.values()) if total is None else total
    if full < sum(parts.values()):
        raise ValueError(f"total {full} is smaller than the split counts {dict(counts)}")
    if full > sum(parts.values()):
        parts[LEFT_OUT] = full - sum(counts.values())
    sizes = parts if len(ids) == full else _proportional(len(ids), parts)
    rng = random.Random(f"sim4seg-split:{salt}:{seed}")
    rng.shuffle(ids)
    out: dict[str, str] = {}
    start = 0
    for split, n in sizes.items():
        for i in ids[start:start + n]:
            out[i] = split
        start += n
    return out


def negatives_split(ids: Iterable[str], counts: Mapping[str, int], seed: int, subset: str) -> dict[str, str]:
    """The negatives' own seeded split, in the proportions of the positives' Table 1 ``counts``.

    Drawn apart from the positives (its own salt), so adding negatives never moves a positive. Pass every
    negative the source lists, present or not, so a partial download keeps the full download's split.
    """
    return seeded_split(ids, counts, seed, salt=f"{subset}/negatives")


def _proportional(n: int, parts: Mapping[str, int]) -> dict[str, int]:
    full = sum(parts.values())
    quota = {k: n * v / full for k, v in parts.items()}
    sizes = {k: int(q) for k, q in quota.items()}
    # Hamilton's method; ties go to the earlier part (train before val before test).
    order = sorted(parts, key=lambda k: -(quota[k] - sizes[k]))
    for k in order[: n - sum(sizes.values())]:
        sizes[k] += 1
    return sizes


def apply_split(items: list[Item], assignment: Mapping[str, str], key: Callable[[Item], str] = lambda it: it.name,
                ) -> tuple[list[Item], int]:
    """Set each item's split from ``assignment`` (by ``key``); drop items left out. Returns (kept, n left out)."""
    kept, left = [], 0
    for it in items:
        split = assignment[key(it)]
        if split == LEFT_OUT:
            left += 1
            continue
        it.split = split
        kept.append(it)
    return kept, left
