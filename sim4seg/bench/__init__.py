"""Benchmarks of the Sim4Seg pipeline. Every benchmark measures its baseline in the same run, interleaved with
the measured code where possible, repeats, and reports medians and ratios (the CPUs may be shared).

    python -m sim4seg.bench NAME [--json] [--quick] [--repeats R] [--threads T]
    scripts/bench.sh NAME [...]

NAME (one module of this package each):
  generate    KV-cached generation (Sim4Seg.generate) vs LISA's no-cache loop (whole sequence re-run per token)
  tts         test-time scaling m=4 x n=4 (sim4seg.evaluation.rows.generate_rows) vs one plain pass and vs 16 passes
  train_step  one training step broken down by component, with and without the SAM-embedding cache
  loader      DataLoader throughput on 1024+ px images (1 and 2 workers) vs the model's consumption rate
  metrics     gIoU/cIoU over 1,000 masks of 1024x1024: sim4seg.metrics vs a plain per-mask numpy loop
  encoder     LiteMedSAM's frozen image encoder: the fast path vs the unmodified encoder, GFLOP/s vs a matmul
  app         one app request (512 x 512, demo preset) split into reading, SAM encoder, generation, decoding
  all         every benchmark above, in that order

A table goes to stdout (to stderr with ``--json``, which prints one JSON object per line on stdout instead; the
last line of each benchmark is its headline object ``{"benchmark", "headline", "value", ...}``). ``--quick``
uses tiny sizes (tests). A missed target is printed as ``target not met: ...`` with the figures.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch

from sim4seg.bench import app, encoder, generate, loader, metrics, train_step, tts
from sim4seg.bench.common import Report

RUNNERS: dict[str, Callable[[Report, bool, int], None]] = {
    "generate": generate.run, "tts": tts.run, "train_step": train_step.run, "loader": loader.run,
    "metrics": metrics.run, "encoder": encoder.run, "app": app.run,
}
BENCHMARKS = tuple(RUNNERS)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m sim4seg.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=[*BENCHMARKS, "all"])
    ap.add_argument("--json", action="store_true", help="JSON lines on stdout (table on stderr)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, 1 with --quick)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: stable timings on shared CPUs)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    records: list[dict] = []
    try:
        for name in BENCHMARKS if args.name == "all" else (args.name,):
            torch.manual_seed(0)
            rep = Report(name, args.json)
            RUNNERS[name](rep, args.quick, repeats)
            records += rep.records
            rep.say()
    finally:
        torch.set_num_threads(threads)
    return records
