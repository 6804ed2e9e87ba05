"""The one JSONL reader/writer and atomic file write of the package.

JSONL files here are append-only logs (evaluation rows, metrics, pipeline state): a process killed mid-write can
leave a last line without its newline. :func:`read_jsonl` ignores such a line and :func:`append_jsonl` cuts it
before appending, so the record it held is simply redone. A complete line that does not parse is corruption, not
a kill, and is an error naming the file and line. :func:`atomic_write_text` replaces a file in one step (temporary
file in the same folder, fsync, ``os.replace``): readers see the old or the new content, never a mix. Files follow
the umask (no 0600 temporary files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sim4seg.errors import UserError


def read_jsonl(path: str | Path) -> list[dict]:
    """Objects of the complete lines of ``path`` (none if it does not exist); a partial last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # bytes after the last newline: a write cut by a kill
    rows = []
    for n, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e.msg}); the file is damaged: remove the line or the "
                            "file") from None
    return rows


def drop_partial_line(path: str | Path) -> None:
    """Cut a last line that has no newline (a write cut by a kill). Reads only the tail unless one is there."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append one line per row, durably (fsync), after cutting a partial last line."""
    path = Path(path)
    drop_partial_line(path)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temporary file beside it, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
