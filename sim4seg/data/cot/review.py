"""``sim4seg data review export|import``: the human-assisted review after the critic (paper Section 2.2).

``export`` writes, per batch of records, a self-contained HTML page (image with the mask overlaid, embedded as a
base64 PNG; question; diagnosis; the CoT; the verdict history of ``cot_state.jsonl``) and a CSV
``id,decision,edited_cot,comment`` with the decision left empty. A reviewer fills ``decision`` with

- ``accept``: keep the shown CoT (it must pass the rule gate), status ``accepted``;
- ``edit``: replace it with ``edited_cot`` (it must pass the rule gate), status ``accepted``;
- ``reject``: ``cot`` back to null, status ``rejected`` (a later ``sim4seg data cot`` run tries again).

``import`` applies the decisions to ``records.jsonl`` and ``cot_state.jsonl`` (atomic rewrites); every bad row
(unknown id, bad decision, an edit that fails the gate, ...) is reported on one line and skipped.
"""

from __future__ import annotations

import base64
import csv
import html
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sim4seg.data.cot.chat import png_bytes
from sim4seg.data.cot.gate import check_cot, clean_cot
from sim4seg.data.cot.store import CotState, RecordsFile, candidate_cot
from sim4seg.data.schema import Record, RecordError, resolve_path
from sim4seg.data.vocab import load_vocabulary
from sim4seg.errors import UserError

CSV_FIELDS = ("id", "decision", "edited_cot", "comment")
DECISIONS = ("accept", "reject", "edit")
SELECTIONS = ("needs_review", "all")
PREVIEW_SIDE = 512


def overlay(image: np.ndarray, mask: np.ndarray | None, max_side: int = PREVIEW_SIDE) -> np.ndarray:
    """RGB image with the mask tinted red and outlined in yellow, downscaled to ``max_side``."""
    import cv2

    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if s < 1 else image.copy()
    if mask is not None:
        m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) if s < 1 else \
            mask.astype(np.uint8)
        fg = m > 0
        out = out.astype(np.float32)
        out[fg] = out[fg] * 0.6 + np.array([255.0, 0.0, 0.0]) * 0.4
        out = np.clip(out, 0, 255).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
    return np.ascontiguousarray(out)


def _preview(root: Path, rec: Record) -> str:
    """An ``<img>`` with the overlay as a base64 PNG, or a line saying why there is none."""
    from sim4seg.data.io import load_image, load_mask

    try:
        image = load_image(resolve_path(root, rec.image, rec.id, "image"))
    except RecordError as e:
        return f'<p class="err">image not shown: {html.escape(str(e))}</p>'
    mask, note = None, "<p>negative: no finding, no mask</p>" if rec.is_negative else ""
    try:
        if not rec.is_negative:
            mask = load_mask(resolve_path(root, rec.mask, rec.id, "mask"), image.shape[:2])
    except RecordError as e:
        note = f'<p class="err">mask not shown: {html.escape(str(e))}</p>'
    b64 = base64.b64encode(png_bytes(overlay(image, mask))).decode("ascii")
    return f'<img alt="{html.escape(rec.id)}" src="data:image/png;base64,{b64}">{note}'


_CSS = """
body{font-family:sans-serif;margin:1.5em;max-width:1200px}
.rec{display:flex;gap:1.5em;border-top:2px solid #888;padding:1em 0}
.rec img{max-width:512px;height:auto;border:1px solid #ccc}
.info{flex:1;min-width:0}
.cot{background:#f4f4f4;padding:.6em;white-space:pre-wrap}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:.3em;vertical-align:top}
.ACCEPT{color:#070}.REJECT{color:#a00}.err{color:#a00}code{background:#eee}
"""


def _history(entry: dict | None) -> str:
    rows = []
    for a in (entry or {}).get("attempts") or []:
        verdict = html.escape(str(a.get("verdict", "")))
        rows.append(f"<tr><td>{a.get('round', '')}</td><td>{html.escape(str(a.get('by', '')))}</td>"
                    f"<td class=\"{verdict}\">{verdict}</td><td>{html.escape(str(a.get('reason', '')))}</td>"
                    f"<td>{html.escape(str(a.get('cot', '')))}</td></tr>")
    for h in (entry or {}).get("human") or []:
        rows.append(f"<tr><td></td><td>human</td><td>{html.escape(str(h.get('decision', '')))}</td>"
                    f"<td>{html.escape(str(h.get('comment', '')))}</td><td></td></tr>")
    if not rows:
        return "<p>no verdict history</p>"
    return ("<table><tr><th>round</th><th>by</th><th>verdict</th><th>reason</th><th>attempt</th></tr>"
            + "".join(rows) + "</table>")


def _page(title: str, csv_name: str, cards: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Fill the <code>decision</code> column of <code>{html.escape(csv_name)}</code> for each record: "
            "<code>accept</code> (keep the CoT), <code>edit</code> (put the corrected CoT in <code>edited_cot</code>; "
            "it must keep the three sentences Firstly / Secondly / Finally and end in the diagnosis) or "
            "<code>reject</code>; then run <code>sim4seg data review import --data DIR --csv FILE</code>.</p>"
            + "".join(cards) + "</body></html>\n")


def _card(root: Path, rec: Record, entry: dict | None, cot: str | None) -> str:
    status = (entry or {}).get("status") or ("accepted" if rec.cot else "no CoT")
    return (f'<div class="rec" id="{html.escape(rec.id)}">{_preview(root, rec)}<div class="info">'
            f"<h2>{html.escape(rec.id)}</h2>"
            f"<p><b>subset</b> {html.escape(rec.subset)} · <b>modality</b> {html.escape(rec.modality)} · "
            f"<b>split</b> {html.escape(rec.split)} · <b>status</b> {html.escape(status)}</p>"
            f"<p><b>Question:</b> {html.escape(rec.query)}</p>"
            f"<p><b>Diagnosis:</b> {html.escape(', '.join(rec.diagnosis))}</p>"
            f"<p><b>CoT:</b></p><div class=\"cot\">{html.escape(cot or '(none)')}</div>"
            f"<h3>Verdict history</h3>{_history(entry)}</div></div>\n")


def export_review(data: str | Path, out: str | Path, status: str = "needs_review", batch_size: int = 50) -> list[Path]:
    """Write ``batch_NNN.html`` + ``batch_NNN.csv`` per ``batch_size`` records into ``out``; returns the CSVs.

    ``status="needs_review"``: records the critic loop gave up on; ``"all"``: every record with a CoT or a
    machine attempt."""
    if status not in SELECTIONS:
        raise UserError(f"--status must be one of {', '.join(SELECTIONS)}, got {status!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    root, out = Path(data), Path(out)
    records = RecordsFile(root)
    state = CotState(root)
    chosen: list[tuple[Record, dict | None, str | None]] = []
    for _, rec in records.records:
        entry = state.get(rec.id)
        cot = candidate_cot(rec, entry)
        if status == "needs_review":
            if entry and entry.get("status") == "needs_review":
                chosen.append((rec, entry, cot))
        elif cot:
            chosen.append((rec, entry, cot))
    out.mkdir(parents=True, exist_ok=True)
    csvs = []
    for b, start in enumerate(range(0, len(chosen), batch_size), 1):
        part = chosen[start:start + batch_size]
        stem = f"batch_{b:03d}"
        cards = [_card(root, rec, entry, cot) for rec, entry, cot in part]
        title = f"CoT review {root.name} batch {b} ({len(part)} records, status {status})"
        (out / f"{stem}.html").write_text(_page(title, f"{stem}.csv", cards), encoding="utf-8")
        with open(out / f"{stem}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_FIELDS)
            for rec, _, _ in part:
                w.writerow([rec.id, "", "", ""])
        csvs.append(out / f"{stem}.csv")
    print(f"review export: {len(chosen)} record(s) in {len(csvs)} batch(es) written to {out}")
    return csvs


@dataclass
class ImportSummary:
    accepted: int = 0
    edited: int = 0
    rejected: int = 0
    undecided: int = 0
    bad: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"review import: {self.accepted} accepted, {self.edited} edited, {self.rejected} rejected, "
                f"{self.undecided} undecided, {self.bad} bad row(s) skipped")


def import_review(data: str | Path, csv_files: list[str | Path]) -> ImportSummary:
    """Apply the decisions of the CSV files (module docstring); one line per bad row on stderr."""
    root = Path(data)
    records = RecordsFile(root)
    state = CotState(root)
    vocab = load_vocabulary(root)
    summary = ImportSummary()
    seen: dict[str, str] = {}

    def bad(where: str, msg: str) -> None:
        line = f"{where}: {msg}"
        print(line, file=sys.stderr)
        summary.problems.append(line)
        summary.bad += 1

    for csv_file in csv_files:
        path = Path(csv_file)
        if not path.is_file():
            raise UserError(f"{path}: CSV file not found")
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("id", "decision") if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: header lacks column(s) {', '.join(missing)}; expected {','.join(CSV_FIELDS)}")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                rid = (row.get("id") or "").strip()
                decision = (row.get("decision") or "").strip().lower()
                edited = (row.get("edited_cot") or "").strip()
                comment = (row.get("comment") or "").strip()
                if not rid and not decision:
                    continue
                rec = records.get(rid)
                if rec is None:
                    bad(where, f"unknown id {rid!r} (not in {records.path})")
                    continue
                if not decision:
                    summary.undecided += 1
                    continue
                if decision not in DECISIONS:
                    bad(where, f"record {rid!r}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
                    continue
                if rid in seen:
                    bad(where, f"record {rid!r}: decided already at {seen[rid]}; this row is ignored")
                    continue
                entry = state.get(rid) or {"id": rid, "status": "accepted" if rec.cot else None, "rounds": 0,
                                           "attempts": []}
                subset = vocab.get(rec.subset)
                if decision == "reject":
                    records.set_cot(rid, None)
                    new_status = "rejected"
                    summary.rejected += 1
                else:
                    cot = clean_cot(edited) if decision == "edit" else candidate_cot(rec, entry)
                    if not cot:
                        what = "edited_cot is empty" if decision == "edit" else "there is no CoT to accept"
                        bad(where, f"record {rid!r}: {decision}: {what}")
                        continue
                    if subset is None:
                        bad(where, f"record {rid!r}: unknown subset {rec.subset!r}")
                        continue
                    reason = check_cot(cot, rec.diagnosis, subset)
                    if reason is not None:
                        bad(where, f"record {rid!r}: {decision}: the CoT fails the rule gate: {reason}")
                        continue
                    records.set_cot(rid, cot)
                    new_status = "accepted"
                    if decision == "edit":
                        summary.edited += 1
                    else:
                        summary.accepted += 1
                seen[rid] = where
                entry["status"] = new_status
                entry.setdefault("human", []).append({
                    "decision": decision, "comment": comment, "file": str(path),
                    "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    **({"edited_cot": clean_cot(edited)} if decision == "edit" else {})})
                state.put(entry)
    records.save()
    if seen:
        state.save()
    return summary
