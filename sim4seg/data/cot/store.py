"""The pipeline's files: ``records.jsonl`` rewritten in place (only the ``cot`` of a line changes) and the
``cot_state.jsonl`` sidecar with each record's history. Both are replaced atomically (temp file +
``os.replace``), so a crash leaves the previous complete file."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from sim4seg.data.schema import RECORDS, Record, RecordError, parse_record
from sim4seg.errors import UserError
from sim4seg.jsonl import atomic_write_text, read_jsonl

STATE = "cot_state.jsonl"


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class RecordsFile:
    """``root/records.jsonl`` held as its lines; :meth:`set_cot` edits one line's ``cot`` (every other field and
    every other line, malformed ones included, is kept as it is) and :meth:`save` replaces the file
    atomically, refusing if someone else changed it since it was read."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / RECORDS
        if not self.path.exists():
            raise UserError(f"{self.path} not found: a dataset folder needs records.jsonl "
                            "(build one with `sim4seg data synth` or `sim4seg data convert`)")
        self._stamp = _stamp(self.path)
        raw = self.path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise UserError(f"{self.path}:{line}: not UTF-8 text (byte {e.start}); "
                            "records.jsonl must be UTF-8: fix or remove that line") from None
        # split on "\n" only (str.splitlines would also split inside strings holding U+2028 and the like)
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()
        self.records: list[tuple[int, Record]] = []
        self.errors: list[RecordError] = []
        self.by_id: dict[str, int] = {}  # id -> index into self.records (first occurrence)
        self.duplicates: list[tuple[int, Record]] = []
        for i, line in enumerate(self.lines):
            if not line.strip():
                continue
            try:
                rec = parse_record(line, f"{self.path}:{i + 1}")
            except RecordError as e:
                self.errors.append(e)
                continue
            if rec.id in self.by_id:
                self.duplicates.append((i, rec))
                continue
            self.by_id[rec.id] = len(self.records)
            self.records.append((i, rec))
        self.dirty = False

    def get(self, rid: str) -> Record | None:
        k = self.by_id.get(rid)
        return None if k is None else self.records[k][1]

    def set_cot(self, rid: str, cot: str | None) -> None:
        line_no, rec = self.records[self.by_id[rid]]
        d = json.loads(self.lines[line_no])
        d["cot"] = cot
        self.lines[line_no] = json.dumps(d, ensure_ascii=False)
        rec.cot = cot
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        if _stamp(self.path) != self._stamp:
            raise UserError(f"{self.path} was changed by another program while this one ran; nothing was "
                            "overwritten: rerun to resume")
        atomic_write_text(self.path, "".join(line + "\n" for line in self.lines))
        self._stamp = _stamp(self.path)
        self.dirty = False


class CotState:
    """``root/cot_state.jsonl``: one JSON object per record (id, status ``accepted | needs_review |
    rejected | failed``, rounds, attempts, human decisions)."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / STATE
        self.entries: dict[str, dict] = {}
        for n, d in enumerate(read_jsonl(self.path), 1):
            if not isinstance(d, dict) or "id" not in d:
                raise UserError(f"{self.path}: entry {n} is not an object with an id; the file is damaged: remove "
                                "the entry or the file (the records' CoTs are in records.jsonl)")
            self.entries[str(d["id"])] = d

    def get(self, rid: str) -> dict | None:
        return self.entries.get(rid)

    def put(self, entry: dict) -> None:
        """Store ``entry`` for its id; human decisions of the previous entry are carried over."""
        old = self.entries.get(entry["id"])
        if old is not None and old is not entry and old.get("human") and "human" not in entry:
            entry["human"] = old["human"]
        entry["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.entries[entry["id"]] = entry

    def save(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.entries.values()))


def candidate_cot(rec: Record, entry: dict | None) -> str | None:
    """The CoT a human reviews: the last machine attempt for records awaiting review (or rejected), else the
    record's own ``cot``."""
    attempts = (entry or {}).get("attempts") or []
    if entry and entry.get("status") in ("needs_review", "rejected") and attempts:
        return attempts[-1].get("cot")
    return rec.cot if rec.cot else (attempts[-1].get("cot") if attempts else None)
