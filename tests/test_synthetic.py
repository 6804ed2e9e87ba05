"""Synthetic M3DS beyond the paper setting: negatives (no finding, no mask) and records with several findings,
without changing the paper-style records of the same seed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sim4seg.data.schema import NORMAL, RecordError, iter_records, parse_record, validate_record
from sim4seg.data.synthetic import write_synthetic
from sim4seg.data.vocab import load_vocabulary


def _records(root):
    return [r for _, r in iter_records(root)]


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_negatives_and_multi_target(tmp_path):
    root = write_synthetic(tmp_path / "d", n=24, seed=4, progress=False, negatives=0.25, multi_target=0.25)
    recs, vocab = _records(root), load_vocabulary(root)
    for r in recs:
        validate_record(r, vocab, root)
    neg = [r for r in recs if r.is_negative]
    multi = [r for r in recs if r.targets]
    assert len(neg) == 6 and len(multi) == round(18 * 0.25)  # exact counts, not draws
    assert all(r.diagnosis == [NORMAL] and r.cot.endswith("the diagnosis is normal.") for r in neg)
    for r in multi:
        masks = [_png(root / t["mask"]) > 0 for t in r.targets]
        assert [t["label"] for t in r.targets] == r.diagnosis and len(set(r.diagnosis)) == 2
        assert all(m.any() for m in masks) and not (masks[0] & masks[1]).any()
        np.testing.assert_array_equal(_png(root / r.mask) > 0, masks[0] | masks[1])  # mask = union (paper)


def test_paper_style_records_unchanged_by_the_new_options(tmp_path):
    plain = _records(write_synthetic(tmp_path / "a", n=18, seed=2, progress=False))
    mixed = _records(write_synthetic(tmp_path / "b", n=18, seed=2, progress=False, negatives=0.3,
                                     multi_target=0.3))
    assert all(r.targets is None and r.mask for r in plain)
    same = [(p, m) for p, m in zip(plain, mixed) if not m.is_negative and not m.targets]
    assert same and all(p.split == m.split and p.diagnosis == m.diagnosis for p, m in same)
    for p, m in same:
        np.testing.assert_array_equal(_png(tmp_path / "a" / p.image), _png(tmp_path / "b" / m.image))


def test_a_negative_with_a_label_is_refused(tmp_path):
    root = write_synthetic(tmp_path / "d", n=3, seed=0, progress=False)
    rec = parse_record('{"id": "x", "subset": "SynthUS", "modality": "ultrasound", "split": "train", '
                       '"image": "images/x.png", "mask": null, "query": "q", "diagnosis": ["benign"]}', "l:1")
    with pytest.raises(RecordError, match="negative"):
        validate_record(rec, load_vocabulary(root), root)


@pytest.mark.parametrize("frac", [-0.1, 1.5])
def test_fractions_out_of_range(tmp_path, frac):
    with pytest.raises(ValueError, match="between 0 and 1"):
        write_synthetic(tmp_path / "d", n=3, negatives=frac, progress=False)
