"""M3DS records -> model inputs, with bad records reported (or skipped) instead of killing an epoch."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sim4seg.data.io import DEFAULT_MAX_PIXELS, load_image, load_mask
from sim4seg.data.prompts import ANSWER_FORMATS, record_answer
from sim4seg.data.schema import Record, RecordError, iter_records, validate_record
from sim4seg.data.vocab import Subset, load_vocabulary
from sim4seg.errors import UserError
from sim4seg.model.processor import Processor

ON_ERROR = ("skip", "raise")
COT_HINT = ("fill the CoTs with `sim4seg data cot --data DIR --assistant SPEC --critic SPEC --max-rounds R` "
            "(data/README.md) or train with data.answer_format=diagnosis")


def lacking_answers(records: Sequence[Record], answer_format: str) -> list[Record]:
    """The records that cannot give an answer in ``answer_format`` (``cot`` without a CoT)."""
    return [r for r in records if record_answer(answer_format, r) is None]


def select_records(root: str | Path, split: str, include_subsets: Sequence[str] | None = None,
                   exclude_subsets: Sequence[str] | None = None, exclude_modalities: Sequence[str] | None = None,
                   include_modalities: Sequence[str] | None = None,
                   ) -> tuple[list[Record], list[str], dict[str, Subset]]:
    """Records of one split after the leave-one-out filters, the problems found in the file (one line each),
    and the vocabulary. Duplicate ids are problems; the first occurrence is kept."""
    root = Path(root)
    vocab = load_vocabulary(root)
    for name in [*(include_subsets or []), *(exclude_subsets or [])]:
        if name not in vocab:
            raise UserError(f"data subset filter names {name!r}, which is not a known subset ({', '.join(vocab)})")
    records, problems, seen = [], [], set()
    for where, rec in iter_records(root):
        if isinstance(rec, RecordError):
            problems.append(str(rec))
            continue
        try:
            validate_record(rec, vocab, root)
        except RecordError as e:
            problems.append(f"{where}: {e}")
            continue
        if rec.id in seen:
            problems.append(f"{where}: duplicate id {rec.id!r}; only its first record is used")
            continue
        seen.add(rec.id)
        if rec.split != split:
            continue
        if include_subsets and rec.subset not in include_subsets:
            continue
        if exclude_subsets and rec.subset in exclude_subsets:
            continue
        if include_modalities and rec.modality not in include_modalities:
            continue
        if exclude_modalities and rec.modality in exclude_modalities:
            continue
        records.append(rec)
    return records, problems, vocab


class M3DSDataset(Dataset):
    """One split of an M3DS folder. ``__getitem__`` returns a model sample, or ``{"error": ..., "id": ...}`` for a
    record whose files cannot be used (with ``on_error=skip``; ``raise`` raises the same one-line message)."""

    def __init__(self, root: str | Path, split: str, processor: Processor, answer_format: str = "cot",
                 on_error: str = "skip", max_pixels: int = DEFAULT_MAX_PIXELS, with_answer: bool = True,
                 **filters: Sequence[str] | None):
        if answer_format not in ANSWER_FORMATS:
            raise UserError(f"data.answer_format={answer_format!r}: use one of {', '.join(ANSWER_FORMATS)}")
        if on_error not in ON_ERROR:
            raise UserError(f"data.on_error={on_error!r}: use one of {', '.join(ON_ERROR)}")
        self.root = Path(root)
        self.records, self.problems, self.vocab = select_records(root, split, **filters)
        if on_error == "raise" and self.problems:
            raise UserError(self.problems[0])
        if not self.records:
            raise UserError(f"{self.root}: no usable {split!r} records (after filters {filters}); "
                            "check data.root and the split/subset settings")
        self.processor, self.answer_format, self.on_error = processor, answer_format, on_error
        self.max_pixels, self.with_answer = max_pixels, with_answer
        if on_error == "raise":  # stop before the first step, not in the middle of an epoch
            self.precheck()

    def __len__(self) -> int:
        return len(self.records)

    def precheck(self) -> None:
        """Raise the first problem (in file order) any record would hit when loaded: answer, files, sizes, mask
        values and token length. The image transforms (CLIP view, SAM frame) are not run: they cannot fail on a
        decoded image. Threads: decoding and tokenising release the GIL."""
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            problem = next((p for p in pool.map(self._problem, self.records) if p), None)
        if problem:
            raise UserError(problem)

    def _problem(self, rec: Record) -> str | None:
        try:
            image, _, answer = self.read(rec)
            self.processor.tokens(rec.query, answer, image.shape[:2])  # Qwen2.5-VL: image tokens follow the size
        except RecordError as e:
            return str(e)
        except ValueError as e:  # too many tokens
            return f"record {rec.id!r}: {e}"
        return None

    def read(self, rec: Record) -> tuple[np.ndarray, np.ndarray, str | None]:
        """(RGB image [H, W, 3], bool mask, answer or None) of a record; :class:`RecordError` if unusable.

        The mask is [H, W], empty for a negative (its answer has no [SEG], so nothing is trained on it), or
        [t, H, W] for a record with t targets (one per [SEG] of its answer, in the record's order)."""
        answer = None
        if self.with_answer:
            answer = record_answer(self.answer_format, rec)
            if answer is None:
                raise RecordError(f"record {rec.id!r} has no CoT; {COT_HINT}")
        image = load_image(self.root / rec.image, self.max_pixels)
        hw = image.shape[:2]
        if rec.is_negative:
            return image, np.zeros(hw, bool), answer
        if rec.targets:
            masks = [load_mask(self.root / t["mask"], hw, self.max_pixels) for t in rec.targets]
            return image, np.stack(masks), answer
        return image, load_mask(self.root / rec.mask, hw, self.max_pixels), answer

    def load(self, rec: Record) -> dict:
        image, mask, answer = self.read(rec)
        try:
            sample = self.processor.sample(image, rec.query, answer, mask, rec.id)
        except ValueError as e:
            raise RecordError(str(e)) from None
        sample.update(subset=rec.subset, record=rec)
        return sample

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        try:
            return self.load(rec)
        except RecordError as e:
            if self.on_error == "raise":
                raise UserError(str(e)) from None
            return {"error": str(e), "id": rec.id}


class ResumableSampler(Sampler[int]):
    """Epoch-seeded order (a permutation, or a weighted draw that mixes subsets), sharded over ranks: the same
    epoch gives the same order, so a resumed run can continue where the interrupted one stopped
    (``sim4seg.training.batches``)."""

    def __init__(self, subsets: Sequence[str], seed: int, rank: int = 0, world: int = 1,
                 weights: dict[str, float] | None = None):
        self.subsets, self.seed, self.rank, self.world = list(subsets), seed, rank, world
        self.weights = dict(weights or {})
        unknown = set(self.weights) - set(self.subsets)
        if unknown:
            raise UserError(f"data.subset_weights names {sorted(unknown)} with no records in this split")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        n = len(self.subsets)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights:
            counts = {s: self.subsets.count(s) for s in set(self.subsets)}
            w = torch.tensor([self.weights.get(s, 1.0) / counts[s] for s in self.subsets], dtype=torch.float64)
            idx = torch.multinomial(w, n, replacement=True, generator=g).tolist()
        else:
            idx = torch.randperm(n, generator=g).tolist()
        per_rank = math.ceil(n / self.world)
        idx = (idx * 2)[: per_rank * self.world]  # pad by wrapping so every rank gets the same count
        return idx[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return math.ceil(len(self.subsets) / self.world)


def collate(processor: Processor, samples: list[dict], left_pad: bool = False) -> dict:
    """Batch the good samples; bad ones travel as ``errors`` so the loop can count and report them."""
    ok = [s for s in samples if "error" not in s]
    errors = [s for s in samples if "error" in s]
    batch = processor.collate(ok, left_pad) if ok else {}
    if ok:
        batch["subsets"] = [s["subset"] for s in ok]
        batch["records"] = [s["record"] for s in ok]
    batch["errors"] = errors
    return batch
