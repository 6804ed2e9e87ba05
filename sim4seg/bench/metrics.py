"""``metrics``: gIoU/cIoU over 1,000 masks of 1024x1024, sim4seg.metrics vs a plain per-mask numpy loop (same
per-mask counts and results asserted)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sim4seg.bench.common import Report, median, timed


def random_blobs(rng: np.random.Generator, n: int, size: int) -> list[np.ndarray]:
    """``n`` bool masks, each 0-3 random filled ellipses (some empty)."""
    import cv2

    out = []
    for _ in range(n):
        m = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(0, 4))):
            c = tuple(int(x) for x in rng.integers(0, size, 2))
            axes = tuple(int(x) for x in rng.integers(size // 50 + 1, size // 5 + 2, 2))
            cv2.ellipse(m, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        out.append(m.view(bool))
    return out


def loop_counts(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> tuple[list[int], list[int], list[float]]:
    """The straightforward baseline: per mask np.logical_and/np.logical_or ``.sum()`` and a float division."""
    inter, union, iou = [], [], []
    for p, g in zip(preds, gts):
        i, u = int(np.logical_and(p, g).sum()), int(np.logical_or(p, g).sum())
        inter.append(i)
        union.append(u)
        iou.append(i / u if u else 1.0)
    return inter, union, iou


def _time_metrics_chunk(preds: list[np.ndarray], gts: list[np.ndarray], repeats: int):
    """Median seconds of (ours, loop) on one chunk, interleaved, and the first run's results (after checking that
    both give the same per-mask counts)."""
    from sim4seg.metrics import SegmentationMeter, segmentation_counts

    per: list[list[float]] = [[], []]
    first = None
    for _ in range(repeats):
        m = SegmentationMeter()
        per[0].append(timed(lambda m=m: m.add_masks_batch(preds, gts))[0])
        dt, res = timed(lambda: loop_counts(preds, gts))
        per[1].append(dt)
        if first is None:
            first = (m, res)
            oi, ou = segmentation_counts(preds, gts)
            if not (np.array_equal(oi, res[0]) and np.array_equal(ou, res[1])):
                raise AssertionError("metrics: per-mask counts differ between implementations")
    return [median(x) for x in per], first


def run(rep: Report, quick: bool, repeats: int) -> None:
    from sim4seg.metrics import SegmentationMeter

    n_masks, size, chunk = (16, 256, 8) if quick else (1000, 1024, 100)
    rng = np.random.default_rng(0)
    impls = ("ours (SegmentationMeter.add_masks_batch)", "numpy loop (baseline)")
    t = {k: [] for k in impls}
    meter = SegmentationMeter()
    base_i, base_u, base_iou = [], [], []
    rep.say(f"metrics: {n_masks} bool mask pairs of {size}x{size} (random ellipses), chunks of {chunk} generated "
            f"between timings, {repeats} repeat(s) per chunk, interleaved")
    for start in range(0, n_masks, chunk):
        k = min(chunk, n_masks - start)
        per, (m, res) = _time_metrics_chunk(random_blobs(rng, k, size), random_blobs(rng, k, size), repeats)
        for name, dt in zip(impls, per):
            t[name].append(dt)
        meter.merge(m)
        base_i += res[0]
        base_u += res[1]
        base_iou += res[2]
    ours = meter.result()
    base = {"gIoU": float(np.mean(np.array(base_iou))), "cIoU": sum(base_i) / sum(base_u) if sum(base_u) else 1.0}
    if ours["gIoU"] != base["gIoU"] or ours["cIoU"] != base["cIoU"]:
        raise AssertionError(f"metrics: results differ: ours {ours} vs loop {base}")
    rate = {k: n_masks / sum(v) for k, v in t.items()}
    rows = [(k, rate[k], rate[k] / rate[impls[1]]) for k in impls]
    rep.table(("implementation", "masks/s", "x loop"), rows)
    for k, r, x in rows:
        rep.emit(impl=k, masks_per_s=r, over_loop=x)
    rep.say(f"gIoU {ours['gIoU']:.6f}, cIoU {ours['cIoU']:.6f}: identical in both (and identical per-mask counts)")
    ratio = rate[impls[0]] / rate[impls[1]]
    rep.target("ours>=loop", ratio >= 1, f"sim4seg.metrics counts {rate[impls[0]]:.0f} masks/s vs the loop's "
               f"{rate[impls[1]]:.0f} ({ratio:.2f}x)")
    rep.headline("speedup_vs_loop", ratio, masks_per_s_ours=rate[impls[0]], masks_per_s_loop=rate[impls[1]],
                 gIoU=ours["gIoU"], cIoU=ours["cIoU"], identical=True,
                 masks=n_masks, size=size, quick=quick)
