"""Evaluation entry point (launcher of :mod:`sim4seg.evaluation`): per-subset gIoU / cIoU / Dice / Acc tables
laid out as the paper's, resumable.

    python -m sim4seg.eval ckpt=runs/demo data.root=data/synthetic split=test mode=generate out=results/demo
    torchrun --nproc_per_node 4 -m sim4seg.eval ...        # samples sharded over ranks, merged on rank 0

A rerun into the same ``out`` resumes the same evaluation and refuses another one (``overwrite=true`` replaces
it). Outputs: ``OUT/samples.jsonl``, ``metrics.json``, ``metrics.md``, ``overlays/``, ``fingerprint.json``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from sim4seg import deps

if TYPE_CHECKING:
    from omegaconf import DictConfig


def run(cfg: DictConfig) -> None:
    from sim4seg.evaluation import evaluate

    res = evaluate(cfg)
    if res:
        o = res["overall"]
        print(json.dumps({k: round(v, 2) if isinstance(v, float) and math.isfinite(v) else v for k, v in o.items()}))


def main() -> None:
    deps.launch("eval", run, deps.CORE, "evaluation")


if __name__ == "__main__":
    main()
