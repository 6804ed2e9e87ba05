"""Checks that stop a run before any heavy work: impossible settings, records that cannot give the chosen
answers, too many unusable records, and a plan with no optimizer step."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sim4seg.data.dataset import COT_HINT, lacking_answers, select_records
from sim4seg.data.schema import RECORDS
from sim4seg.errors import UserError
from sim4seg.model.rvls2m import RVLS2MConfig


def check_settings(cfg: DictConfig) -> None:
    """Refuse settings that cannot work, before anything is built."""
    try:
        RVLS2MConfig(**OmegaConf.to_container(cfg.rvls2m, resolve=True))
    except (TypeError, ValueError) as e:
        raise UserError(f"rvls2m: {e}") from None
    limit = cfg.data.get("max_skip_fraction")
    if limit is None or not 0 <= limit <= 1:
        raise UserError(f"data.max_skip_fraction={limit}: use a fraction between 0 and 1 (default 0.05)")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise UserError(f"train.max_steps={cfg.train.max_steps}: a run needs at least one optimizer step")


def check_records(cfg: DictConfig) -> None:
    """The training split must give answers in ``data.answer_format`` (CoT records need their CoT), and
    records.jsonl may not hold more unusable lines than ``data.max_skip_fraction``."""
    d = cfg.data
    records, problems, _ = select_records(d.root, d.train_split, include_subsets=d.include_subsets,
                                          exclude_subsets=d.exclude_subsets,
                                          include_modalities=d.include_modalities,
                                          exclude_modalities=d.exclude_modalities)
    if not records:  # the dataset says why, with the filters
        return
    lacking = lacking_answers(records, d.answer_format)
    if len(lacking) > d.max_skip_fraction * len(records):
        raise UserError(f"{len(lacking)} of {len(records)} {d.train_split!r} records in {d.root} have no CoT (e.g. "
                        f"{lacking[0].id!r}) but data.answer_format={d.answer_format}; {COT_HINT}")
    with open(Path(d.root) / RECORDS, encoding="utf-8") as f:  # every non-blank line is a record or a problem
        lines = sum(1 for line in f if line.strip())
    if len(problems) > d.max_skip_fraction * lines:
        raise UserError(f"{len(problems)} line(s) of {d.root}/records.jsonl cannot be used (first: {problems[0]}), "
                        f"more than data.max_skip_fraction={d.max_skip_fraction:g}; fix them (`sim4seg data check "
                        f"{d.root}`) or raise data.max_skip_fraction")


def planned_steps(micro_per_epoch: int, train_cfg: DictConfig, world: int) -> int:
    """Optimizer steps of the run: whole accumulation windows per epoch times the epochs (as DeepSpeed counts
    micro-batches across epochs, a short epoch still contributes), at most ``train.max_steps``; zero is refused."""
    t = train_cfg
    per_epoch = micro_per_epoch // t.grad_accum
    total = per_epoch * t.epochs if per_epoch else micro_per_epoch * t.epochs // t.grad_accum
    if t.max_steps is not None:
        total = min(total, t.max_steps)
    if total == 0:
        raise UserError(f"no optimizer step: {t.epochs} epoch(s) of {micro_per_epoch} micro-batch(es) per rank "
                        f"(train.micro_batch={t.micro_batch}, {world} rank(s)) never fill train.grad_accum="
                        f"{t.grad_accum}; lower train.grad_accum or train.micro_batch, or add data or epochs")
    return total
