"""``sim4seg data check`` / ``stats`` on a small dataset with injected problems."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sim4seg.data import commands
from sim4seg.data.check import check_dataset, dataset_stats, format_stats
from sim4seg.data.schema import Record


def _rec(rid: str, subset: str = "BUSI", split: str = "train", diagnosis: list[str] | None = None,
         image: str | None = None, mask: str | None = None, modality: str | None = None) -> Record:
    modality = modality or {"BUSI": "ultrasound", "Kvasir-SEG": "endoscopy"}[subset]
    name = rid.split("/")[1]
    return Record(id=rid, subset=subset, modality=modality, split=split,
                  image=image or f"images/{subset}/{name}.png", mask=mask or f"masks/{subset}/{name}.png",
                  query="Please segment the tumor.", diagnosis=diagnosis or (["benign"] if subset == "BUSI"
                                                                                else ["polyp"]))


def _write(root: Path, rec: Record, seed: int, hw: tuple[int, int] = (12, 16), mask: np.ndarray | None = None) -> None:
    rng = np.random.default_rng(seed)
    (root / rec.image).parent.mkdir(parents=True, exist_ok=True)
    (root / rec.mask).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(root / rec.image)
    if mask is None:
        mask = np.zeros(hw, np.uint8)
        mask[2:6, 3:9] = 255
    Image.fromarray(mask.astype(np.uint8), "L").save(root / rec.mask)


def _dataset(root: Path, recs: list[Record], extra_lines: list[str] = ()) -> None:
    lines = [r.to_json() for r in recs] + list(extra_lines)
    (root / "records.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    recs = [_rec("BUSI/a"), _rec("BUSI/b", split="val"), _rec("BUSI/c", split="test", diagnosis=["malignant"]),
            _rec("Kvasir-SEG/k1", subset="Kvasir-SEG"), _rec("Kvasir-SEG/k2", subset="Kvasir-SEG", split="test")]
    for i, r in enumerate(recs):
        _write(tmp_path, r, seed=i)
    _dataset(tmp_path, recs)
    return tmp_path


def test_clean_dataset_passes(clean: Path, capsys) -> None:
    report = check_dataset(clean)
    assert report.ok and report.n_records == 5
    assert report.counts["BUSI"] == {"train": 1, "val": 1, "test": 1}
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["check", str(clean)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "no problems" in out
    assert any(line.split()[:5] == ["BUSI", "1", "1", "1", "3"] for line in out.splitlines())


def test_injected_problems_are_each_reported(tmp_path: Path, capsys) -> None:
    good = _rec("BUSI/good")
    missing = _rec("BUSI/missing")
    wrong_size = _rec("BUSI/wrong_size")
    zero_one = _rec("BUSI/zero_one")
    escape = _rec("BUSI/escape", image="../outside.png")
    unknown = _rec("BUSI/unknown", diagnosis=["cancer"])
    copy_other_split = _rec("BUSI/copy", split="test")
    modality = _rec("Kvasir-SEG/mod", subset="Kvasir-SEG", modality="ultrasound")
    for i, r in enumerate([good, unknown, modality]):
        _write(tmp_path, r, seed=i)
    _write(tmp_path, wrong_size, seed=10)
    Image.new("L", (5, 5)).save(tmp_path / wrong_size.mask)
    m01 = np.zeros((12, 16), np.uint8)
    m01[1:4, 1:4] = 1
    _write(tmp_path, zero_one, seed=11, mask=m01)
    _write(tmp_path, copy_other_split, seed=0)  # same pixels as BUSI/good (seed 0), but in test
    (tmp_path / "outside.png").write_bytes(b"")
    _write(tmp_path, _rec("BUSI/escape"), seed=12)  # its mask exists; only the image path escapes
    dup = _rec("BUSI/good", split="val")
    _dataset(tmp_path, [good, missing, wrong_size, zero_one, escape, unknown, copy_other_split, modality, dup],
             extra_lines=["{not json"])

    report = check_dataset(tmp_path)
    by_record: dict[str, list[str]] = {}
    for p in report.problems:
        by_record.setdefault(p.record, []).append(f"{p.file} | {p.reason}")
    print(by_record)

    def has(rid: str, *needles: str) -> bool:
        return any(all(n in text for n in needles) for text in by_record.get(rid, []))

    assert has("BUSI/missing", "images/BUSI/missing.png", "file not found")
    assert has("BUSI/missing", "masks/BUSI/missing.png", "file not found")
    assert has("BUSI/wrong_size", "masks/BUSI/wrong_size.png", "mask is 5x5 but its image is 12x16")
    assert has("BUSI/zero_one", "masks/BUSI/zero_one.png", "values [0, 1]")
    assert has("BUSI/escape", "records.jsonl:5", "escapes the dataset folder")
    assert has("BUSI/unknown", "records.jsonl:6", "'cancer'", "not in the BUSI vocabulary")
    assert has("BUSI/copy", "images/BUSI/copy.png", "same image content as record 'BUSI/good'", "'test'")
    assert has("Kvasir-SEG/mod", "records.jsonl:8", "modality 'ultrasound'")
    assert has("BUSI/good", "records.jsonl:9", "duplicate id (first at records.jsonl:1)")
    assert has("?", "records.jsonl:10", "malformed JSON")
    assert not report.ok and set(by_record) == {"BUSI/missing", "BUSI/wrong_size", "BUSI/zero_one", "BUSI/escape",
                                                "BUSI/unknown", "BUSI/copy", "Kvasir-SEG/mod", "BUSI/good", "?"}
    assert len(by_record["BUSI/escape"]) == 1  # reported once, not by both the schema and the path check
    # the command prints one line per problem and exits 1
    capsys.readouterr()
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["check", str(tmp_path)])
    assert args.func(args) == 1
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("problem: ")]
    assert len(lines) == len(report.problems)
    assert any("record 'BUSI/wrong_size'" in x and "mask is 5x5" in x for x in lines)


def test_max_pixels_limit(clean: Path) -> None:
    report = check_dataset(clean, max_pixels=100)  # the images are 12x16 = 192 pixels
    assert len(report.problems) == 10 and all("exceeds the limit 100" in p.reason for p in report.problems)


def test_stats_prints_table1_layout(clean: Path, capsys) -> None:
    stats = dataset_stats(clean)
    assert stats.sizes == {"BUSI": {"train": 1, "val": 1, "test": 1}, "Kvasir-SEG": {"train": 1, "val": 0, "test": 1}}
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["stats", str(clean)])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == format_stats(stats).splitlines()
    assert lines[0].split() == ["Dataset", "X-ray", "Dermoscopy", "Endoscopy", "Ultrasound", "Fundus", "Train", "Val",
                                "Test"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    # Kvasir-SEG comes before BUSI (paper order); one tick each, in the right column
    assert [line.split()[0] for line in lines[1:]] == ["Kvasir-SEG", "BUSI", "Total"]
    assert rows["BUSI"] == ["✓", "1", "1", "1"] and rows["Kvasir-SEG"] == ["✓", "1", "0", "1"]
    assert lines[2].index("✓") > lines[1].index("✓")  # ultrasound column is right of endoscopy
    assert rows["Total"] == ["0", "0", "1", "1", "0", "2", "1", "2"]


def test_stats_counts_a_duplicated_line_once(clean: Path) -> None:
    text = (clean / "records.jsonl").read_text()
    first = text.splitlines()[0]
    (clean / "records.jsonl").write_text(text + first + "\n" + "garbage\n")
    stats = dataset_stats(clean)
    assert stats.sizes["BUSI"]["train"] == 1 and stats.skipped_lines == 1
    assert "1 unparseable line(s)" in format_stats(stats)
    assert json.loads(first)["id"] == "BUSI/a"


def test_negatives_and_targets_are_checked_and_counted(clean: Path) -> None:
    neg = Record(id="BUSI/n", subset="BUSI", modality="ultrasound", split="val", image="images/BUSI/n.png", mask=None,
                 query="Please segment the tumor.", diagnosis=["normal"])
    two = _rec("BUSI/t", split="test")
    Image.fromarray(np.full((12, 16, 3), 7, np.uint8)).save(clean / neg.image)
    a, b = np.zeros((12, 16), np.uint8), np.zeros((12, 16), np.uint8)
    a[2:6, 3:9], b[8:10, 1:4] = 255, 255
    _write(clean, two, seed=8, mask=a | b)
    two.targets = [{"label": "benign", "mask": "masks/BUSI/t_0.png"}, {"label": "malignant", "mask": "masks/BUSI/t_1.png"}]
    Image.fromarray(a, "L").save(clean / "masks/BUSI/t_0.png")
    Image.fromarray(b, "L").save(clean / "masks/BUSI/t_1.png")
    recs = [Record(**json.loads(x)) for x in (clean / "records.jsonl").read_text().splitlines()]
    _dataset(clean, [*recs, neg, two])
    assert check_dataset(clean).ok  # a negative has no mask file; the targets add up to the mask
    stats = dataset_stats(clean)
    assert stats.sizes["BUSI"] == {"train": 1, "val": 1, "test": 2}
    assert stats.negatives["BUSI"] == {"train": 0, "val": 1, "test": 0} and stats.several["BUSI"] == 1
    lines = format_stats(stats).splitlines()
    assert lines[0].endswith("Test  Train neg  Val neg  Test neg  Several")
    assert {line.split()[0]: line.split()[-7:] for line in lines[1:]}["BUSI"] == ["1", "1", "2", "0", "1", "0", "1"]
    # a target mask that is not part of the union is a problem
    Image.fromarray(np.zeros((12, 16), np.uint8), "L").save(clean / "masks/BUSI/t_1.png")
    problems = check_dataset(clean).problems
    assert [(p.record, p.reason[:38]) for p in problems] == [("BUSI/t", "mask is not the union of the 2 targets")]
