"""`sim4seg data convert --source folder`: a user's own images (PNG, sideways JPEG, DICOM, NIfTI) and masks listed
in a CSV become an M3DS folder that `data check` accepts, without code; bad rows are named by CSV line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from PIL import Image
from test_readers import sideways_jpeg, write_dicom  # tests/ is on sys.path under pytest

from sim4seg.cli import main
from sim4seg.data.prompts import query_for
from sim4seg.data.schema import iter_records
from sim4seg.data.vocab import load_vocabulary

SUBSETS = {"HeadCT": {"modality": "CT", "labels": ["hemorrhage", "normal"], "finding": "bleed", "organ": "brain",
                      "synonyms": {"bleeding": "hemorrhage"}}}


def mask_png(path, hw: tuple[int, int]) -> str:
    m = np.zeros(hw, np.uint8)
    m[: hw[0] // 2, : hw[1] // 2] = 255
    Image.fromarray(m).save(path)
    return path.name


def make_folder(root) -> None:
    root.mkdir()
    (root / "subsets.json").write_text(json.dumps(SUBSETS))
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(root / "a.png")
    write_dicom(root / "b.dcm", np.full((16, 24), 1064, np.uint16), RescaleSlope=1, RescaleIntercept=-1024)
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 3), np.float32), np.eye(4)), root / "c.nii.gz")  # shown 10 x 12
    sideways_jpeg(root / "d.jpg")  # stored 30 x 40 (HxW), displayed 40 x 30
    rows = [
        "image,mask,label,query,split",
        f"a.png,{mask_png(root / 'a_mask.png', (20, 30))},hemorrhage,Where is the bleed?,test",
        f"b.dcm,{mask_png(root / 'b_mask.png', (16, 24))},Bleeding,,",
        f"c.nii.gz,{mask_png(root / 'c_mask.png', (10, 12))},hemorrhage;normal,,train",
        f"d.jpg,{mask_png(root / 'd_mask.png', (40, 30))},hemorrhage,,",
        "e.png,,normal,,",                         # no such image
        f"a.png,{'a_mask.png'},fracture,,",       # not a HeadCT label
        f"a.png,{'a_mask.png'},normal,,holdout",  # not a split
    ]
    (root / "list.csv").write_text("\n".join(rows) + "\n")


def test_folder_source_converts_a_users_own_data(tmp_path, capsys):
    root, out = tmp_path / "mine", tmp_path / "m3ds"
    make_folder(root)
    assert main(["data", "convert", "--source", "folder", "--root", str(root), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "folder -> " in cap.out and "4 HeadCT record(s) written" in cap.out and "3 skipped" in cap.out
    assert "list.csv:6: image 'e.png' not found" in cap.err
    assert "list.csv:7: label 'fracture' is not one of HeadCT's labels" in cap.err
    assert "list.csv:8: split 'holdout' is not one of train, val, test" in cap.err
    recs = {r.id: r for _, r in iter_records(out)}
    assert sorted(recs) == ["HeadCT/a", "HeadCT/b", "HeadCT/c", "HeadCT/d"]
    vocab = load_vocabulary(out)  # the declaration travelled with the data
    assert vocab["HeadCT"].modality == "CT" and json.loads((out / "subsets.json").read_text()) == SUBSETS
    assert recs["HeadCT/a"].query == "Where is the bleed?" and recs["HeadCT/a"].split == "test"
    assert recs["HeadCT/b"].query == query_for(vocab["HeadCT"], "HeadCT/b")  # empty query: the templates'
    assert recs["HeadCT/b"].diagnosis == ["hemorrhage"]  # a synonym, canonicalised
    assert recs["HeadCT/c"].diagnosis == ["hemorrhage", "normal"] and recs["HeadCT/c"].split == "train"
    assert recs["HeadCT/b"].image.endswith(".png")  # DICOM read by the one reader, stored as PNG (40 HU -> 128)
    assert (np.asarray(Image.open(out / recs["HeadCT/b"].image)) == 128).all()
    assert Image.open(out / recs["HeadCT/d"].mask).size == (30, 40)  # the mask drawn on the displayed JPEG
    assert all(r.modality == "CT" and r.split in ("train", "val", "test") for r in recs.values())
    assert main(["data", "check", str(out)]) == 0
    capsys.readouterr()
    # Rerunning resumes: nothing is written twice.
    assert main(["data", "convert", "--source", "folder", "--root", str(root), "--out", str(out)]) == 0
    assert "0 HeadCT record(s) written" in capsys.readouterr().out and len(list(iter_records(out))) == 4


def test_folder_source_refuses_an_unusable_folder_in_one_line(tmp_path, capsys):
    root = tmp_path / "mine"
    root.mkdir()
    args = ["data", "convert", "--source", "folder", "--root", str(root), "--out", str(tmp_path / "out")]
    cases = [
        (None, "expected exactly one CSV"),
        ("image,label\na.png,normal\n", "the header lacks column(s) mask"),
        ("image,mask,label\na.png,,normal\n", "no 'subset' given"),
        ("image,mask,label,subset\na.png,,normal,Mine\n", "subset 'Mine' is neither built in nor declared"),
    ]
    for text, expected in cases:
        if text is not None:
            (root / "list.csv").write_text(text)
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
