"""The rounds of the multi-role pipeline over a dataset folder (the steps are listed in :mod:`sim4seg.data.cot`):
choose the records that need a CoT, then per batch assistant -> rule gate -> critic, rejections fed back,
saving after every batch."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim4seg.data.cot.backends import make_backend
from sim4seg.data.cot.chat import Backend, ChatRequest, redact
from sim4seg.data.cot.gate import assistant_prompt, check_cot, clean_cot, critic_prompt, parse_verdict
from sim4seg.data.cot.store import CotState, RecordsFile
from sim4seg.data.schema import Record, RecordError, resolve_path, validate_record
from sim4seg.data.vocab import Subset, load_vocabulary
from sim4seg.errors import UserError


@dataclass
class CotSummary:
    accepted: int = 0
    needs_review: int = 0
    failed: int = 0
    skipped: int = 0  # already had a CoT
    awaiting_review: int = 0  # needs_review from an earlier run, not retried
    state_path: str = ""
    ids: dict[str, list[str]] = field(default_factory=lambda: {"accepted": [], "needs_review": [], "failed": []})

    def line(self) -> str:
        return (f"cot: {self.accepted} accepted, {self.needs_review} need review, {self.failed} failed; skipped "
                f"{self.skipped} with a CoT already and {self.awaiting_review} awaiting human review; "
                f"history in {self.state_path}")


@dataclass
class _Item:
    rec: Record
    subset: Subset
    image: np.ndarray
    attempts: list[dict] = field(default_factory=list)
    accepted: bool = False

    @property
    def feedback(self) -> tuple[str | None, str | None]:
        if not self.attempts:
            return None, None
        last = self.attempts[-1]
        return last.get("reason"), last.get("cot")


def _as_backend(b: Backend | str, options: dict) -> Backend:
    return make_backend(b, **options) if isinstance(b, str) else b


def generate_cots(data: str | Path, assistant: Backend | str, critic: Backend | str, max_rounds: int,
                  batch_size: int = 8, limit: int | None = None, overwrite: bool = False, retry_review: bool = False,
                  progress: bool = True, backend_options: dict | None = None) -> CotSummary:
    """Run the pipeline over ``data/records.jsonl``; backends may be objects or SPEC strings (built only when
    some record needs work; the same spec twice shares one model)."""
    from tqdm import tqdm

    from sim4seg.data.io import load_image

    if max_rounds < 1:
        raise UserError(f"--max-rounds must be at least 1, got {max_rounds}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise UserError(f"--limit must not be negative, got {limit}")
    root = Path(data)
    records = RecordsFile(root)
    vocab = load_vocabulary(root)
    state = CotState(root)
    summary = CotSummary(state_path=str(state.path))
    specs = {"assistant": redact(assistant) if isinstance(assistant, str) else type(assistant).__name__,
             "critic": redact(critic) if isinstance(critic, str) else type(critic).__name__}

    for e in records.errors:
        print(f"skipped: {e}", file=sys.stderr)
        summary.failed += 1
    for line_no, rec in records.duplicates:
        print(f"skipped: {records.path}:{line_no + 1}: duplicate id {rec.id!r} (its first line is processed)",
              file=sys.stderr)
        summary.failed += 1

    def fail(rec: Record, reason: str) -> None:  # reason: one line naming the record
        tqdm.write(f"failed: {reason}", file=sys.stderr)
        state.put({"id": rec.id, "status": "failed", "reason": reason, "rounds": 0, "attempts": [], **specs})
        summary.failed += 1
        summary.ids["failed"].append(rec.id)

    pending: list[tuple[Record, Subset]] = []
    for _, rec in records.records:
        entry = state.get(rec.id)
        if not overwrite:
            if rec.cot:
                summary.skipped += 1
                continue
            if entry and entry.get("status") == "needs_review" and not retry_review:
                summary.awaiting_review += 1
                continue
        if limit is not None and len(pending) >= limit:
            break
        try:  # the schema's rules: known subset, labels of it (a negative: ["normal"]), paths inside root
            validate_record(rec, vocab, root)
        except RecordError as e:
            fail(rec, str(e))
            continue
        if not rec.diagnosis:
            fail(rec, f"record {rec.id!r}: the diagnosis is empty; a CoT must end in it")
            continue
        pending.append((rec, vocab[rec.subset]))

    if not pending:
        if summary.ids["failed"]:
            state.save()
        return summary

    options = backend_options or {}
    asst = _as_backend(assistant, options)
    crit = asst if isinstance(critic, str) and critic == assistant else _as_backend(critic, options)

    with tqdm(total=len(pending), desc="cot", unit="rec", disable=not progress) as bar:
        for start in range(0, len(pending), batch_size):
            items: list[_Item] = []
            for rec, subset in pending[start:start + batch_size]:
                try:
                    image = load_image(resolve_path(root, rec.image, rec.id, "image"))
                except RecordError as e:
                    fail(rec, f"record {rec.id!r}: {e}")
                    continue
                items.append(_Item(rec, subset, image))
            _run_rounds(items, asst, crit, max_rounds)
            for it in items:
                status = "accepted" if it.accepted else "needs_review"
                state.put({"id": it.rec.id, "status": status, "rounds": len(it.attempts), "attempts": it.attempts,
                           **specs})
                if it.accepted:
                    records.set_cot(it.rec.id, it.attempts[-1]["cot"])
                    summary.accepted += 1
                else:
                    summary.needs_review += 1
                summary.ids[status].append(it.rec.id)
            records.save()  # records first: a crash in between leaves an accepted CoT that a rerun skips
            state.save()
            bar.update(len(pending[start:start + batch_size]))
    return summary


def _run_rounds(items: list[_Item], assistant: Backend, critic: Backend, max_rounds: int) -> None:
    active = list(items)
    for rnd in range(1, max_rounds + 1):
        if not active:
            break
        reqs = []
        for it in active:
            reason, previous = it.feedback
            reqs.append(ChatRequest(assistant_prompt(it.rec, it.subset, reason, previous), it.image, it.rec.id))
        replies = _checked(assistant.generate(reqs), len(reqs), "assistant")
        to_critic: list[tuple[_Item, dict]] = []
        for it, reply in zip(active, replies, strict=True):
            cot = clean_cot(reply)
            attempt: dict[str, Any] = {"round": rnd, "cot": cot}
            if cot != reply.strip():
                attempt["raw"] = reply
            gate = check_cot(cot, it.rec.diagnosis, it.subset)
            if gate is not None:
                attempt.update(by="gate", verdict="REJECT", reason=gate)
            else:
                to_critic.append((it, attempt))
            it.attempts.append(attempt)
        if to_critic:
            creqs = [ChatRequest(critic_prompt(it.rec, it.subset, a["cot"]), it.image, it.rec.id)
                     for it, a in to_critic]
            verdicts = _checked(critic.generate(creqs), len(creqs), "critic")
            for (it, attempt), reply in zip(to_critic, verdicts, strict=True):
                ok, reason = parse_verdict(reply)
                attempt.update(by="critic", verdict="ACCEPT" if ok else "REJECT", reason=reason,
                               critic_reply=reply)
                it.accepted = ok
        active = [it for it in active if not it.accepted]


def _checked(replies: Iterable[str], n: int, who: str) -> list[str]:
    replies = list(replies)
    if len(replies) != n:
        raise RuntimeError(f"the {who} backend returned {len(replies)} replies for {n} requests")
    return [r if isinstance(r, str) else "" for r in replies]
