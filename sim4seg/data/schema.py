"""The M3DS record: one JSON object per line of ``records.jsonl`` in a dataset folder.

A dataset folder holds ``records.jsonl``, ``images/``, ``masks/`` and optionally ``subsets.json``. Paths in
records are relative to the folder. Masks are single-channel 0/255 PNGs of the image's height and width.

Beyond the paper setting: a *negative* (an image with no finding) has ``"mask": null`` and the diagnosis
``["normal"]``; a record with several findings lists them in ``targets`` (one label and mask each), while
``mask`` stays their union (the paper's single-mask setting).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sim4seg.data.vocab import SPLITS, Subset
from sim4seg.errors import UserError

RECORDS = "records.jsonl"
REQUIRED = ("id", "subset", "modality", "split", "image", "mask", "query", "diagnosis")
NORMAL = "normal"  # the diagnosis of a negative (no finding, no mask), in every subset


@dataclass
class Record:
    id: str
    subset: str
    modality: str
    split: str
    image: str
    mask: str | None  # None: a negative (no finding)
    query: str
    diagnosis: list[str]
    cot: str | None = None
    source: dict = field(default_factory=dict)
    targets: list[dict] | None = None  # several findings: [{"label": str, "mask": path}, ...]; mask = their union

    @property
    def is_negative(self) -> bool:
        return self.mask is None

    def to_json(self) -> str:
        d = asdict(self)
        if d["targets"] is None:  # paper-style records keep the paper's fields only
            del d["targets"]
        return json.dumps(d, ensure_ascii=False)


class RecordError(ValueError):
    """A record that cannot be used; ``str()`` is one line naming the record or line, the file and the reason."""


def parse_record(line: str, where: str) -> Record:
    """Parse one JSONL line; ``where`` ("records.jsonl:12") is used in errors."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}: malformed JSON ({e.msg}); fix or remove the line") from None
    if not isinstance(d, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise RecordError(f"{where}: record {d.get('id', '?')!r} lacks field(s) {', '.join(missing)}")
    if not isinstance(d["diagnosis"], list):
        raise RecordError(f"{where}: record {d['id']!r}: 'diagnosis' must be a list of labels")
    return Record(**{k: d[k] for k in Record.__dataclass_fields__ if k in d})


def validate_record(rec: Record, vocab: dict[str, Subset], root: Path) -> None:
    """Check the fields that need no file access: known subset/modality/split/labels, paths inside ``root``."""
    if rec.subset not in vocab:
        raise RecordError(f"record {rec.id!r}: unknown subset {rec.subset!r}; declare it in {root / 'subsets.json'}")
    if not isinstance(rec.modality, str) or not rec.modality.strip():  # modalities are open (CT, MRI ...)
        raise RecordError(f"record {rec.id!r}: modality must be a non-empty string, got {rec.modality!r}")
    if rec.split not in SPLITS:
        raise RecordError(f"record {rec.id!r}: unknown split {rec.split!r} (one of {', '.join(SPLITS)})")
    labels = vocab[rec.subset].labels
    if rec.is_negative:
        if rec.diagnosis != [NORMAL] or rec.targets:
            raise RecordError(f"record {rec.id!r}: a record without mask is a negative; its diagnosis must be "
                              f"[{NORMAL!r}] and it has no targets")
    else:
        bad = [x for x in rec.diagnosis if x not in labels]
        if bad:
            raise RecordError(f"record {rec.id!r}: label(s) {bad} not in the {rec.subset} vocabulary {list(labels)}")
    resolve_path(root, rec.image, rec.id, "image")
    if rec.mask is not None:
        resolve_path(root, rec.mask, rec.id, "mask")
    for j, t in enumerate(rec.targets or []):
        if not isinstance(t, dict) or set(t) != {"label", "mask"} or t["label"] not in labels:
            raise RecordError(f"record {rec.id!r}: targets[{j}] must be {{\"label\": one of {list(labels)}, "
                              f"\"mask\": path}}")
        resolve_path(root, t["mask"], rec.id, f"targets[{j}].mask")


def resolve_path(root: Path, rel: str, rec_id: str, key: str) -> Path:
    """``root/rel``, refusing absolute paths and paths that leave ``root`` (``../``, symlinks)."""
    if os.path.isabs(rel):
        raise RecordError(f"record {rec_id!r}: {key} path {rel!r} is absolute; use a path relative to {root}")
    full = (root / rel).resolve()
    if not full.is_relative_to(root.resolve()):
        raise RecordError(f"record {rec_id!r}: {key} path {rel!r} escapes the dataset folder {root}")
    return full


def iter_records(root: str | Path) -> Iterator[tuple[str, Record | RecordError]]:
    """Yield ``(where, record or error)`` for each non-blank line of ``root/records.jsonl``."""
    path = Path(root) / RECORDS
    if not path.exists():
        raise UserError(f"{path} not found: a dataset folder needs records.jsonl "
                        "(build one with `sim4seg data synth` or `sim4seg data convert`)")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                where = f"{path}:{i}"
                try:
                    yield where, parse_record(line, where)
                except RecordError as e:
                    yield where, e


def append_records(root: str | Path, records: list[Record]) -> None:
    """Append records durably: written, flushed and fsynced, so a crash never truncates earlier lines."""
    path = Path(root) / RECORDS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(r.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
