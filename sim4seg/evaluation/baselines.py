"""Trivial baselines beside a result, so a demo's numbers mean something: all-empty and all-full masks (gIoU /
cIoU; with negatives also "never a mask" / "always a mask" for N-Acc, FP-rate, miss-rate) and the majority
diagnosis of each subset (Acc), on the same records as the evaluation.

    python -m sim4seg.baselines --data data/synthetic --split test --results results/demo
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

from sim4seg.data.dataset import select_records
from sim4seg.data.io import image_size, load_mask
from sim4seg.jsonl import atomic_write_json, atomic_write_text, read_jsonl
from sim4seg.metrics import NEGATIVE_KEYS, SegmentationMeter, negative_scores


def baselines(root: str | Path, split: str, ids: set[str] | None = None) -> dict:
    """All-empty ("never a mask") and all-full ("always a mask") predictions scored as the evaluation scores
    masks (a negative's target is empty; several targets: one pair each), their N-Acc / FP-rate / miss-rate and
    positives-only gIoU / cIoU, and the majority diagnosis of each subset (Acc). Percent."""
    records, _, _ = select_records(root, split)
    records = [r for r in records if ids is None or r.id in ids]
    meters = {k: SegmentationMeter() for k in ("empty", "full", "empty_pos", "full_pos")}
    for r in records:
        if r.is_negative:
            h, w = image_size(Path(root) / r.image)
            areas, size = [0], h * w
        else:
            files = [t["mask"] for t in r.targets] if r.targets else [r.mask]
            gts = [load_mask(Path(root) / f) for f in files]
            areas, size = [int(g.sum()) for g in gts], gts[0].size
        for area in areas:
            for kind in ("", "_pos") if not r.is_negative else ("",):
                meters[f"empty{kind}"].add(0, area)  # empty prediction: no intersection, union = ground truth
                meters[f"full{kind}"].add(area, size)  # full prediction: intersection = ground truth, union = image
    by_subset: dict[str, Counter] = {}
    for r in records:
        by_subset.setdefault(r.subset, Counter())[tuple(sorted(r.diagnosis))] += 1
    majority = sum(c.most_common(1)[0][1] for c in by_subset.values()) / max(1, len(records))
    negative = [r.is_negative for r in records]
    out = {"n": len(records), "n_negatives": sum(negative), "majority_acc": 100 * majority}
    for kind, gives in (("empty", False), ("full", True)):
        pos = meters[f"{kind}_pos"].result()
        neg = negative_scores(negative, [gives] * len(records))
        out[kind] = {**{k: 100 * v for k, v in meters[kind].result().items()}, "gIoU_pos": 100 * pos["gIoU"],
                     "cIoU_pos": 100 * pos["cIoU"], **{k: None if math.isnan(v) else 100 * v for k, v in neg.items()}}
    return out


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--results", required=True, help="an eval output folder (metrics.json, samples.jsonl)")
    args = ap.parse_args(argv)
    res = json.loads((Path(args.results) / "metrics.json").read_text())
    ids = {r["id"] for r in read_jsonl(Path(args.results) / "samples.jsonl") if "error" not in r}  # as scored
    base = baselines(args.data, args.split, ids)
    o = res["overall"]
    best_seg = max(base["empty"]["gIoU"], base["full"]["gIoU"])
    keys = ["gIoU", "cIoU"] + (["gIoU_pos", "cIoU_pos", *NEGATIVE_KEYS] if base["n_negatives"] else [])
    row = lambda name, d, acc: f"| {name} | " + " | ".join(_f(d.get(k)) for k in keys) + f" | {acc} |"  # noqa: E731
    lines = ["| | " + " | ".join(keys) + " | Acc |", "|---" * (len(keys) + 2) + "|",
             row("trained model", o, _f(o.get("Acc"))),
             row("all-empty mask (never a mask)", base["empty"], "-"),
             row("all-full mask (always a mask)", base["full"], "-"),
             row("majority diagnosis per subset", {}, _f(base["majority_acc"]))]
    seg_ok, acc_ok = o["gIoU"] > best_seg, o.get("Acc", 0.0) > base["majority_acc"]
    verdict = (f"gIoU {o['gIoU']:.1f} vs best trivial {best_seg:.1f}: {'beats' if seg_ok else 'DOES NOT beat'}; "
               f"Acc {o.get('Acc', 0.0):.1f} vs majority {base['majority_acc']:.1f}: "
               f"{'beats' if acc_ok else 'DOES NOT beat'}")
    if base["n_negatives"]:  # each trivial rule is perfect on one kind of sample: N-Acc means something beside miss-rate
        verdict += (f"; N-Acc {_f(o.get('N-Acc'))} at miss-rate {_f(o.get('miss-rate'))} (never a mask: 100 at 100, "
                    "always a mask: 0 at 0)")
    if o.get("pointing") is not None:  # does RVLS2M point at the lesion? (positives; sim4seg.metrics.region)
        verdict += (f"\nRVLS2M region: precision {_f(o['region_precision'])}, recall {_f(o['region_recall'])}, "
                    f"pointing {_f(o['pointing'])}")
    table = "\n".join(lines)
    print(table + "\n" + verdict)
    atomic_write_text(Path(args.results) / "baselines.md", f"# Learned vs trivial baselines ({base['n']} samples)\n\n"
                                                           f"{table}\n\n{verdict}\n")
    atomic_write_json(Path(args.results) / "baselines.json", {**base, "model": o, "beats_segmentation": seg_ok,
                                                               "beats_diagnosis": acc_ok})
    return 0 if seg_ok and acc_ok else 1
