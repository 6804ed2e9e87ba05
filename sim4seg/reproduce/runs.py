"""Running what a table needs: the mode (full or smoke), training and evaluation runs that skip what is done,
the start point (LISA or smoke mode's stand-in), and the Markdown/JSON writer of a result."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from sim4seg.config import compose
from sim4seg.errors import UserError
from sim4seg.jsonl import read_jsonl
from sim4seg.model.checkpoint import require_finished

PAPER = json.loads((Path(__file__).parents[1] / "paper_results.json").read_text())
ZERO_SHOT = "lisa_zeroshot"  # not trained: the start point (LISA) evaluated as it is


@dataclass
class Mode:
    out: Path
    smoke: bool
    data: Path
    lisa_dir: str | None = None
    train_extra: list[str] = field(default_factory=list)
    eval_extra: list[str] = field(default_factory=list)

    def model_overrides(self, exp: str) -> list[str]:
        if self.smoke:  # every smoke run but the stand-in itself starts from the stand-in, as full runs from LISA
            return ["model=tiny"] + ([] if exp == SMOKE_LISA else [f"model.init_from={start_point(self)}"])
        if not self.lisa_dir:
            raise UserError("full runs start from LISA: pass --lisa-dir (a `sim4seg convert-lisa` output)")
        return ["model=lisa_7b_converted", f"model.lisa_dir={self.lisa_dir}"]


SMOKE_LISA = "smoke_lisa"
# Enough steps at a high learning rate for the tiny model to answer "It is [SEG]. ..." (30 are; 2 are not).
SMOKE_LISA_TRAIN = ("train.max_steps=30", "train.epochs=100", "train.lr=1e-2", "train.micro_batch=4")


def make_mode(args: argparse.Namespace) -> Mode:
    out = Path(args.out or ("results/smoke" if args.smoke else "results"))
    if args.smoke:
        data = out / "data"
        if not (data / "records.jsonl").exists():
            from sim4seg.data.synthetic import write_synthetic

            write_synthetic(data, n=48, seed=0, progress=False)
        return Mode(out, True, data,
                    train_extra=["train.max_steps=2", "train.micro_batch=2", "train.grad_accum=1",
                                 "train.warmup_steps=1", "train.save_every=0", "train.eval_every=0",
                                 "train.progress=false", "wandb.mode=disabled", "train.cache_sam_embeddings=true",
                                 f"train.cache_dir={out / 'cache'}"],
                    eval_extra=["max_samples=6", "max_new_tokens=16", "overlays_per_subset=1", "progress=false",
                                "batch_size=6"])
    if not args.data:
        raise UserError("pass --data (the M3DS folder built as in data/README.md)")
    return Mode(out, False, Path(args.data), args.lisa_dir)


def finished(run: Path) -> bool:
    try:
        require_finished(run)
    except UserError:
        return False
    return True


def train_run(mode: Mode, exp: str, extra: tuple[str, ...] = ()) -> Path:
    """Train experiment ``exp`` unless its run directory is finished; returns the run directory."""
    from sim4seg.training import train

    run = mode.out / "runs" / exp
    if finished(run):
        return run
    overrides = [f"experiment={exp}", *mode.model_overrides(exp), f"data.root={mode.data}",
                 f"train.output_dir={run}", f"train.resume={(run / 'checkpoints' / 'latest').exists()}",
                 *mode.train_extra, *(SMOKE_LISA_TRAIN if exp == SMOKE_LISA else ()), *extra]
    cfg = compose("train", overrides)
    print(f"[train] {exp}", flush=True)
    train(cfg)
    require_finished(run)  # a run that stopped short is never reported
    return run


def start_point(mode: Mode) -> Path:
    """What fine-tuning starts from and the zero-shot rows evaluate: LISA, or smoke mode's stand-in for it."""
    return train_run(mode, SMOKE_LISA) if mode.smoke else Path(mode.lisa_dir or "")


def eval_run(mode: Mode, exp: str, run: Path, variant: str = "", extra: tuple[str, ...] = ()) -> dict:
    """Evaluate a run on the test split unless done; returns its metrics.json."""
    from sim4seg.evaluation import evaluate

    out = mode.out / "evals" / (exp + (f"-{variant}" if variant else ""))
    if not (out / "metrics.json").exists():
        overrides = [f"ckpt={run}", f"data.root={mode.data}", "split=test", "mode=generate", f"out={out}",
                     *mode.eval_extra, *extra]
        cfg = compose("eval", overrides)
        print(f"[eval] {out.name}", flush=True)
        evaluate(cfg)
    if mode.smoke and not any(r.get("n_seg") for r in read_jsonl(out / "samples.jsonl")):
        raise UserError(f"smoke: no answer of {out} has a [SEG], so no mask was decoded and the mask path went "
                        f"untested; check that {mode.out / 'runs' / SMOKE_LISA} answers with [SEG]")
    return json.loads((out / "metrics.json").read_text())


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):  # counts (truncated answers)
        return str(x)
    return x if isinstance(x, str) else f"{x:.2f}"


def table(head: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows])


def write_result(mode: Mode, name: str, title: str, body: str, data: dict) -> Path:
    note = ("Smoke run: synthetic data, the tiny random model trained 30 steps into a stand-in for LISA (it "
            "answers with [SEG], so masks are decoded), then 2 steps per run. It checks the pipeline; its numbers "
            "say nothing about the method." if mode.smoke else "")
    md = mode.out / f"{name}.md"
    md.write_text(f"# {title}\n\n{note}\n\n{body}\n\nAll numbers in percent, except `Truncated`: the number of "
                  "answers cut by the generation budget (`max_new_tokens`) before they ended. `paper` columns: "
                  "published values.\n")
    (mode.out / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(f"wrote {md}")
    return md


def run_for(mode: Mode, exp: str, extra: tuple[str, ...] = ()) -> Path:
    return start_point(mode) if exp == ZERO_SHOT else train_run(mode, exp, extra)


