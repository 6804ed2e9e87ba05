"""Audit of the diagnosis-accuracy rule against answers graded by hand, across the ten M3DS subsets.

Each answer was graded as a clinician reading it would: correct when it states the target, commits to it, and
states no other label of the subset. The grades were written before running the rule and are not adjusted to
it; the test reports the agreement and requires 95% or better. Answers in the diagnosis format ("It is [SEG].
...") are scored with ``fmt="diagnosis"``, CoT answers with ``fmt="cot"``, and every answer also with "auto".
"""

from __future__ import annotations

import pytest

from sim4seg.data.vocab import M3DS_SUBSETS
from sim4seg.metrics import diagnosis_correct, extract_labels

S = "It is [SEG]. "
COT = "It is [SEG]. Firstly, the modality of this image is {m}. Secondly, "

# (subset, answer, target, graded correct)
AUDIT: list[tuple[str, str, list[str], bool]] = [
    # BUSI: benign / malignant / normal
    ("BUSI", S + "The diagnosis is benign rather than malignant.", ["benign"], True),
    ("BUSI", S + "It is malignant, ruling out a benign fibroadenoma.", ["malignant"], True),
    ("BUSI", S + "A malignant tumor is unlikely; the mass is benign.", ["benign"], True),
    ("BUSI", S + "These features suggest malignancy.", ["malignant"], True),
    ("BUSI", S + "The lesion is non-malignant.", ["benign"], True),
    ("BUSI", "The diagnosis is benign. [SEG].", ["benign"], True),
    ("BUSI", S + "The mass could be benign or malignant; a biopsy is needed.", ["benign"], False),
    ("BUSI", S + "Malignancy cannot be excluded, but the oval shape and circumscribed margins favour a benign "
     "lesion.", ["benign"], True),
    ("BUSI", S + "No lesion is seen; the breast tissue is normal.", ["normal"], True),
    ("BUSI", S + "The lesion is not benign.", ["malignant"], True),
    ("BUSI", S + "Although the margins look smooth, the lesion is malignant.", ["malignant"], True),
    ("BUSI", S + "The tumor appears benign.", ["malignant"], False),
    ("BUSI", S + "The lesion is not non-malignant.", ["malignant"], True),
    ("BUSI", S + "Benign? Unlikely. The lesion is malignant.", ["malignant"], True),
    ("BUSI", S + "The breast is normal.", ["normal"], True),
    ("BUSI", S + "There is a benign mass; the surrounding tissue is normal.", ["benign"], True),
    ("BUSI", COT.format(m="ultrasound") + "the image analysis shows an irregular hypoechoic mass with spiculated "
     "margins, which could suggest a benign cyst only if the margins were smooth. Finally, the diagnosis is "
     "malignant.", ["malignant"], True),
    # TN3K: benign / malignant
    ("TN3K", S + "The thyroid nodule is benign.", ["benign"], True),
    ("TN3K", S + "The nodule is not malignant.", ["benign"], True),
    ("TN3K", S + "Microcalcifications and a taller-than-wide shape indicate a malignant nodule.", ["malignant"],
     True),
    ("TN3K", S + "The nodule is probably malignant.", ["malignant"], True),
    ("TN3K", S + "It may be malignant.", ["malignant"], False),
    ("TN3K", S + "Malignant? No, the nodule is benign.", ["benign"], True),
    ("TN3K", S + "The nodule is neither clearly benign nor malignant.", ["benign"], False),
    ("TN3K", S + "There is no evidence of malignancy.", ["benign"], True),
    ("TN3K", S + "Benign, although malignancy cannot be completely excluded.", ["benign"], True),
    ("TN3K", "The diagnosis is malignant. [SEG].", ["malignant"], True),
    ("TN3K", COT.format(m="ultrasound") + "the nodule is", ["benign"], False),  # cut before the diagnosis
    # ISBI: benign / malignant (dermoscopy)
    ("ISBI", S + "The diagnosis is malignant.", ["malignant"], True),
    ("ISBI", S + "This is a melanoma.", ["malignant"], True),
    ("ISBI", S + "The lesion looks like a benign nevus, not a melanoma.", ["benign"], True),
    ("ISBI", S + "Benign.", ["benign"], True),
    ("ISBI", S + "The lesion is cancerous.", ["malignant"], True),
    ("ISBI", S + "It is either benign or malignant.", ["malignant"], False),
    ("ISBI", S + "Irregular pigment network and blue-white veil: malignant.", ["malignant"], True),
    ("ISBI", S + "The lesion is non-cancerous.", ["malignant"], False),
    ("ISBI", S + "Malignant melanoma.", ["malignant"], True),
    # ISIC: melanoma / seborrheic keratosis / nevus
    ("ISIC", S + "The diagnosis is melanoma.", ["melanoma"], True),
    ("ISIC", S + "This is a seborrheic keratosis rather than a melanoma.", ["seborrheic keratosis"], True),
    ("ISIC", S + "A benign melanocytic nevus.", ["nevus"], True),
    ("ISIC", S + "Melanoma is unlikely; it is a nevus.", ["nevus"], True),
    ("ISIC", S + "The lesion could be a nevus or a melanoma.", ["nevus"], False),
    ("ISIC", S + "The lesion is benign.", ["nevus"], False),
    ("ISIC", S + "Seborrhoeic keratoses typically show milia-like cysts, as here.", ["seborrheic keratosis"], True),
    ("ISIC", S + "Not a nevus but a melanoma.", ["melanoma"], True),
    ("ISIC", S + "The mole is a nevus with no features of melanoma.", ["nevus"], True),
    ("ISIC", S + "Melanoma versus nevus.", ["melanoma"], False),
    ("ISIC", COT.format(m="dermoscopy") + "the lesion shows a regular pigment network typical of a nevus. "
     "Finally, the diagnosis is melanoma.", ["melanoma"], True),
    # Kvasir-SEG: polyp
    ("Kvasir-SEG", S + "The diagnosis is polyp.", ["polyp"], True),
    ("Kvasir-SEG", S + "A sessile polyp is seen in the colon.", ["polyp"], True),
    ("Kvasir-SEG", S + "There is no polyp; the mucosa is normal.", ["polyp"], False),
    ("Kvasir-SEG", S + "Polypoid lesion of the colonic mucosa.", ["polyp"], True),
    ("Kvasir-SEG", S, ["polyp"], False),
    ("Kvasir-SEG", S + "Multiple polyps are visible.", ["polyp"], True),
    ("Kvasir-SEG", S + "Possibly a polyp.", ["polyp"], False),
    ("Kvasir-SEG", S + "The image shows polyps rather than normal mucosa.", ["polyp"], True),
    # FracAtlas: fracture
    ("FracAtlas", S + "There is a fracture of the distal radius.", ["fracture"], True),
    ("FracAtlas", S + "The bone is fractured.", ["fracture"], True),
    ("FracAtlas", S + "No fracture is seen.", ["fracture"], False),
    ("FracAtlas", S + "There is no dislocation, but a fracture is present.", ["fracture"], True),
    ("FracAtlas", S + "A fracture cannot be ruled out.", ["fracture"], False),
    ("FracAtlas", S + "The radiograph shows a broken bone.", ["fracture"], True),
    ("FracAtlas", S + "Fracture.", ["fracture"], True),
    # BoneFracture: fracture
    ("BoneFracture", S + "The diagnosis is fracture.", ["fracture"], True),
    ("BoneFracture", S + "Fractures are visible in the ankle.", ["fracture"], True),
    ("BoneFracture", S + "The cortex is intact, with no fracture line.", ["fracture"], False),
    ("BoneFracture", S + "There is no doubt this is a fracture.", ["fracture"], True),
    ("BoneFracture", S + "The bones are normal.", ["fracture"], False),
    # BFD: six fracture sites
    ("BFD", S + "There is a fracture of the wrist.", ["wrist fracture"], True),
    ("BFD", S + "The diagnosis is elbow fracture.", ["elbow fracture"], True),
    ("BFD", S + "A fractured finger.", ["finger fracture"], True),
    ("BFD", S + "Humerus fracture, not a shoulder fracture.", ["humerus fracture"], True),
    ("BFD", S + "There are wrist and forearm fractures.", ["wrist fracture", "forearm fracture"], True),
    ("BFD", S + "There are wrist and forearm fractures.", ["wrist fracture"], False),
    ("BFD", S + "The shoulder is intact; the fracture involves the humerus.", ["humerus fracture"], True),
    ("BFD", S + "It could be an elbow fracture or a forearm fracture.", ["elbow fracture"], False),
    ("BFD", S + "The humerus shows no fracture; there is a fracture of the forearm.", ["forearm fracture"], True),
    ("BFD", S + "Fracture of the left elbow.", ["elbow fracture"], True),
    ("BFD", S + "There is a fracture.", ["wrist fracture"], False),  # the site is not stated
    # ChestX-Det: 13 findings, several per image
    ("ChestX-Det", S + "The diagnosis is effusion and nodule.", ["effusion", "nodule"], True),
    ("ChestX-Det", S + "There is a pleural effusion.", ["effusion"], True),
    ("ChestX-Det", S + "Diffuse nodules are seen in both lungs.", ["diffuse nodule"], True),
    ("ChestX-Det", S + "Diffuse nodules are seen in both lungs.", ["nodule"], False),
    ("ChestX-Det", S + "No effusion, pneumothorax or consolidation; there is a mass.", ["mass"], True),
    ("ChestX-Det", S + "Cardiomegaly with a small effusion.", ["cardiomegaly", "effusion"], True),
    ("ChestX-Det", S + "The heart is enlarged.", ["cardiomegaly"], True),
    ("ChestX-Det", S + "Atelectasis rather than consolidation.", ["atelectasis"], True),
    ("ChestX-Det", S + "There is pleural thickening and a nodule.", ["pleural thickening", "nodule"], True),
    ("ChestX-Det", S + "Fibrotic changes are seen in both upper lobes.", ["fibrosis"], True),
    ("ChestX-Det", S + "Emphysema; no pneumothorax.", ["emphysema"], True),
    ("ChestX-Det", S + "The findings may represent a mass or a nodule.", ["mass"], False),
    ("ChestX-Det", S + "Effusion. There is also a nodule.", ["effusion", "nodule"], True),
    ("ChestX-Det", S + "Nodule, not diffuse nodule.", ["nodule"], True),
    ("ChestX-Det", S + "A solitary nodule without a mass.", ["nodule"], True),
    ("ChestX-Det", S + "There is an effusion and the heart size is normal.", ["effusion"], True),
    # FIVES: age-related macular degeneration / diabetic retinopathy / glaucoma / normal
    ("FIVES", S + "There is no evidence at all of diabetic retinopathy; the fundus is normal.", ["normal"], True),
    ("FIVES", S + "The diagnosis is glaucoma.", ["glaucoma"], True),
    ("FIVES", S + "Glaucomatous cupping of the optic disc.", ["glaucoma"], True),
    ("FIVES", S + "Drusen at the macula indicate age-related macular degeneration.",
     ["age-related macular degeneration"], True),
    ("FIVES", S + "Signs of diabetic retinopathy with microaneurysms.", ["diabetic retinopathy"], True),
    ("FIVES", S + "The optic disc is normal, but there are haemorrhages consistent with diabetic retinopathy.",
     ["diabetic retinopathy"], True),
    ("FIVES", S + "AMD or glaucoma.", ["age-related macular degeneration"], False),
    ("FIVES", S + "A healthy retina.", ["normal"], True),
    ("FIVES", S + "Normal fundus without glaucoma.", ["normal"], True),
    ("FIVES", S + "The fundus shows macular degeneration.", ["age-related macular degeneration"], True),
    ("FIVES", S + "Glaucoma is not present; the picture is that of diabetic retinopathy.", ["diabetic retinopathy"],
     True),
    ("FIVES", S + "No signs of glaucoma or AMD.", ["normal"], False),
    ("FIVES", COT.format(m="fundus") + "the analysis shows an enlarged cup-to-disc ratio. Finally, the diagnosis "
     "is glaucoma.", ["glaucoma"], True),
]


def _fmt(answer: str) -> str:
    return "cot" if "Firstly" in answer else "diagnosis"


def test_audit_covers_every_subset() -> None:
    assert len(AUDIT) >= 60
    per = {name: sum(s == name for s, *_ in AUDIT) for name in M3DS_SUBSETS}
    assert min(per.values()) >= 5, per
    assert {g for *_, g in AUDIT} == {True, False}
    for subset, _, target, _ in AUDIT:  # every target is a label of its subset
        assert set(target) <= set(M3DS_SUBSETS[subset].labels)


@pytest.mark.parametrize("mode", ["format", "auto"])
def test_rule_agrees_with_the_graded_answers(mode: str) -> None:
    disagreements = []
    for subset, answer, target, graded in AUDIT:
        vocab = M3DS_SUBSETS[subset]
        fmt = _fmt(answer) if mode == "format" else "auto"
        if diagnosis_correct(answer, target, vocab, fmt) is not graded:
            disagreements.append(f"{subset}: {answer!r} target {target} graded {graded}; rule states "
                                 f"{extract_labels(answer, vocab, fmt)}")
    agreement = 1 - len(disagreements) / len(AUDIT)
    print(f"\ndiagnosis audit ({mode}): {len(AUDIT) - len(disagreements)}/{len(AUDIT)} agree = {agreement:.1%}")
    print("\n".join(disagreements))
    assert agreement >= 0.95, "\n".join(disagreements)
