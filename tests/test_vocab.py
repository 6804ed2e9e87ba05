"""subsets.json: every field checked, built-in subsets protected, modalities open (queries, records, selection)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim4seg.data.prompts import query_for
from sim4seg.data.schema import Record, validate_record
from sim4seg.data.vocab import M3DS_SUBSETS, MODALITIES, OPTIONAL_FIELDS, REQUIRED_FIELDS, load_vocabulary
from sim4seg.errors import UserError
from sim4seg.metrics import diagnosis_correct

CT = {"modality": "CT", "labels": ["Hemorrhage", "normal"], "finding": "bleed", "organ": "brain",
      "synonyms": {"bleeding": "hemorrhage"}}


def write(root: Path, entries: dict) -> Path:
    (root / "subsets.json").write_text(json.dumps(entries))
    return root


def test_every_documented_field_is_accepted_and_defaults_apply(tmp_path: Path) -> None:
    vocab = load_vocabulary(write(tmp_path, {"HeadCT": CT, "Mini": {"modality": "MRI", "labels": ["tumor"]}}))
    head = vocab["HeadCT"]
    assert (head.modality, head.labels, head.finding, head.organ, head.short) == \
        ("CT", ("hemorrhage", "normal"), "bleed", "brain", "HeadCT")
    assert head.synonyms == {"bleeding": "hemorrhage"}
    mini = vocab["Mini"]
    assert (mini.finding, mini.organ, mini.short, mini.synonyms) == ("lesion", "", "Mini", {})
    assert set(M3DS_SUBSETS) < set(vocab)
    # data/README.md documents exactly these fields
    readme = (Path(__file__).parents[1] / "data" / "README.md").read_text()
    for f in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS):
        assert f"`{f}`" in readme, f


def test_unknown_field_is_an_error_naming_it(tmp_path: Path) -> None:
    # A typo used to fall back to the default finding "lesion" without a word.
    with pytest.raises(UserError, match=r"entry 'HeadCT': unknown field\(s\) 'findings'; the fields are"):
        load_vocabulary(write(tmp_path, {"HeadCT": {**CT, "findings": "bleed"}}))


@pytest.mark.parametrize(("entry", "message"), [
    ({"labels": ["x"]}, r"lacks field\(s\) 'modality'"),
    ({"modality": "CT", "labels": "hemorrhage"}, "field 'labels' must be a list"),
    ({"modality": "CT", "labels": []}, "labels must be a non-empty list"),
    ({"modality": "", "labels": ["x"]}, "modality must be a non-empty string"),
    ({"modality": "CT", "labels": ["x"], "override": "yes"}, "field 'override' must be true or false"),
    ({"modality": "CT", "labels": ["x"], "synonyms": {"y": "z"}}, "synonym 'y' points to unknown label 'z'"),
])
def test_bad_entries_are_refused(tmp_path: Path, entry: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_vocabulary(write(tmp_path, {"Mine": entry}))


def test_replacing_a_builtin_subset_needs_override(tmp_path: Path) -> None:
    mine = {"modality": "ultrasound", "labels": ["benign", "malignant"]}
    with pytest.raises(UserError, match=r"entry 'BUSI' would replace the built-in M3DS subset 'BUSI'.*\"override\": true"):
        load_vocabulary(write(tmp_path, {"BUSI": mine}))
    vocab = load_vocabulary(write(tmp_path, {"BUSI": {**mine, "override": True}}))
    assert vocab["BUSI"].labels == ("benign", "malignant")
    assert M3DS_SUBSETS["BUSI"].labels == ("benign", "malignant", "normal")  # the built-in table is untouched


def test_any_modality_makes_queries_records_and_scores(tmp_path: Path) -> None:
    vocab = load_vocabulary(write(tmp_path, {"HeadCT": CT, "Retina": {"modality": "OCT", "labels": ["edema"]},
                                             "Slides": {"modality": "pathology", "labels": ["tumor", "normal"]}}))
    assert "CT" not in MODALITIES
    for name in ("HeadCT", "Retina", "Slides"):
        for i in range(12):  # every template
            q = query_for(vocab[name], f"{name}/{i}")
            assert "{" not in q and vocab[name].finding in q
    assert "brain CT image" in " ".join(query_for(vocab["HeadCT"], f"HeadCT/{i}") for i in range(12))
    rec = Record(id="HeadCT/1", subset="HeadCT", modality="CT", split="train", image="images/1.png",
                 mask="masks/1.png", query="q", diagnosis=["hemorrhage"])
    validate_record(rec, vocab, tmp_path)  # was "unknown modality 'CT'"
    assert diagnosis_correct("It is [SEG]. There is bleeding, not a normal scan.", ["hemorrhage"], vocab["HeadCT"])
