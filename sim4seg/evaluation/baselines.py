"""Trivial baselines beside a result, so a demo's numbers mean something: all-empty and all-full masks (gIoU /
cIoU) and the majority diagnosis of each subset (Acc), on the same records as the evaluation.

    python -m sim4seg.baselines --data data/synthetic --split test --results results/demo
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from sim4seg.data.dataset import select_records
from sim4seg.data.io import load_mask
from sim4seg.jsonl import atomic_write_json, atomic_write_text, read_jsonl
from sim4seg.metrics import SegmentationMeter


def baselines(root: str | Path, split: str, ids: set[str] | None = None) -> dict:
    records, _, _ = select_records(root, split)
    records = [r for r in records if ids is None or r.id in ids]
    empty, full = SegmentationMeter(), SegmentationMeter()
    for r in records:
        gt = load_mask(Path(root) / r.mask)
        area = int(gt.sum())
        empty.add(0, area)  # empty prediction: no intersection, union = ground truth
        full.add(area, gt.size)  # full prediction: intersection = ground truth, union = whole image
    by_subset: dict[str, Counter] = {}
    for r in records:
        by_subset.setdefault(r.subset, Counter())[tuple(sorted(r.diagnosis))] += 1
    majority = sum(c.most_common(1)[0][1] for c in by_subset.values()) / max(1, len(records))
    return {"n": len(records), "empty": {k: 100 * v for k, v in empty.result().items()},
            "full": {k: 100 * v for k, v in full.result().items()}, "majority_acc": 100 * majority}


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
    lines = ["| | gIoU | cIoU | Acc |", "|---|---|---|---|",
             f"| trained model | {o['gIoU']:.2f} | {o['cIoU']:.2f} | {o.get('Acc', float('nan')):.2f} |",
             f"| all-empty mask | {base['empty']['gIoU']:.2f} | {base['empty']['cIoU']:.2f} | - |",
             f"| all-full mask | {base['full']['gIoU']:.2f} | {base['full']['cIoU']:.2f} | - |",
             f"| majority diagnosis per subset | - | - | {base['majority_acc']:.2f} |"]
    seg_ok, acc_ok = o["gIoU"] > best_seg, o.get("Acc", 0.0) > base["majority_acc"]
    verdict = (f"gIoU {o['gIoU']:.1f} vs best trivial {best_seg:.1f}: {'beats' if seg_ok else 'DOES NOT beat'}; "
               f"Acc {o.get('Acc', 0.0):.1f} vs majority {base['majority_acc']:.1f}: "
               f"{'beats' if acc_ok else 'DOES NOT beat'}")
    table = "\n".join(lines)
    print(table + "\n" + verdict)
    atomic_write_text(Path(args.results) / "baselines.md", f"# Learned vs trivial baselines ({base['n']} samples)\n\n"
                                                           f"{table}\n\n{verdict}\n")
    atomic_write_json(Path(args.results) / "baselines.json", {**base, "model": o, "beats_segmentation": seg_ok,
                                                               "beats_diagnosis": acc_ok})
    return 0 if seg_ok and acc_ok else 1
