"""Audit of the diagnosis-accuracy rule against answers graded by hand, across the ten M3DS subsets.

Each answer was graded as a clinician reading it would: correct when it states the target, commits to it, and
states no other label of the subset. The grades were written before running the rule and are not adjusted to
it; the test reports the agreement and requires 95% or better. ``AUDIT`` was written first (106/108 before two
general fixes: "taller-than-wide" read "than" as a negator; a negated label of a two-label subset did not state
the other); ``DEVELOPMENT`` are two later batches that found further flaws (83/85 and 53/59 before their
fixes), kept so the fixes stay fixed. Answers in the diagnosis format ("It is [SEG].
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

DEVELOPMENT: list[tuple[str, str, list[str], bool]] = [
 ("BUSI", S+"Benign.", ["benign"], True),
 ("BUSI", S+"The lesion is most likely benign.", ["benign"], True),
 ("BUSI", S+"The lesion is likely malignant rather than benign.", ["malignant"], True),
 ("BUSI", S+"There is no malignant lesion.", ["benign"], False),
 ("BUSI", S+"The findings are consistent with a benign fibroadenoma.", ["benign"], True),
 ("BUSI", S+"It is not malignant, it is benign.", ["benign"], True),
 ("BUSI", S+"Malignant or benign cannot be determined.", ["benign"], False),
 ("BUSI", S+"Highly suspicious for malignancy.", ["malignant"], True),
 ("BUSI", S+"The mass is benign-appearing.", ["benign"], True),
 ("BUSI", S+"The tumour is malignant and not benign.", ["malignant"], True),
 ("BUSI", S+"It is benign. It is malignant.", ["malignant"], False),
 ("BUSI", S+"I am not sure whether it is benign or malignant.", ["benign"], False),
 ("BUSI", S+"Features of a malignant tumor are absent; benign.", ["benign"], True),
 ("BUSI", S+"The image shows normal breast tissue without any mass.", ["normal"], True),
 ("BUSI", S+"Cancer.", ["malignant"], True),
 ("BUSI", S+"The diagnosis is not benign but malignant.", ["malignant"], True),
 ("BUSI", S+"The diagnosis is benign, but malignant transformation cannot be ruled out.", ["benign"], True),
 ("BUSI", S+"Instead of a benign lesion, this is a malignant one.", ["malignant"], True),
 ("TN3K", S+"Malignant nodule.", ["malignant"], True),
 ("TN3K", S+"The nodule is benign and not cancerous.", ["benign"], True),
 ("TN3K", S+"The nodule shows malignant features but is benign.", ["benign"], True),
 ("TN3K", S+"Benign nodule; malignancy is excluded.", ["benign"], True),
 ("TN3K", S+"Cannot exclude malignancy.", ["malignant"], False),
 ("TN3K", S+"The thyroid nodule is malignant (papillary carcinoma).", ["malignant"], True),
 ("TN3K", S+"The nodule is not benign.", ["malignant"], True),
 ("ISBI", S+"Benign nevus.", ["benign"], True),
 ("ISBI", S+"The lesion is malignant, not benign.", ["malignant"], True),
 ("ISBI", S+"Probably benign.", ["benign"], True),
 ("ISBI", S+"The lesion is benign or malignant.", ["benign"], False),
 ("ISIC", S+"Nevus.", ["nevus"], True),
 ("ISIC", S+"The lesion is a melanoma, not a seborrheic keratosis.", ["melanoma"], True),
 ("ISIC", S+"Seborrheic keratosis.", ["seborrheic keratosis"], True),
 ("ISIC", S+"It is a naevus rather than a melanoma.", ["nevus"], True),
 ("ISIC", S+"No melanoma; this is a benign mole.", ["nevus"], True),
 ("ISIC", S+"Melanoma or seborrheic keratosis.", ["melanoma"], False),
 ("ISIC", S+"A keratosis.", ["seborrheic keratosis"], False),
 ("Kvasir-SEG", S+"A polyp.", ["polyp"], True),
 ("Kvasir-SEG", S+"No polyps are seen.", ["polyp"], False),
 ("Kvasir-SEG", S+"The polyp is located in the sigmoid colon.", ["polyp"], True),
 ("Kvasir-SEG", S+"The lesion is a colonic polyp, not a mass.", ["polyp"], True),
 ("FracAtlas", S+"A hairline fracture of the tibia.", ["fracture"], True),
 ("FracAtlas", S+"There is no evidence of a fracture.", ["fracture"], False),
 ("FracAtlas", S+"The image shows a fractured femur.", ["fracture"], True),
 ("FracAtlas", S+"Fracture is unlikely.", ["fracture"], False),
 ("FracAtlas", S+"The fracture is not displaced.", ["fracture"], True),
 ("FracAtlas", S+"A non-displaced fracture.", ["fracture"], True),
 ("BoneFracture", S+"Yes, there is a fracture.", ["fracture"], True),
 ("BoneFracture", S+"There may be a fracture.", ["fracture"], False),
 ("BFD", S+"Wrist fracture.", ["wrist fracture"], True),
 ("BFD", S+"The forearm is fractured.", ["forearm fracture"], True),
 ("BFD", S+"A fracture of the shoulder.", ["shoulder fracture"], True),
 ("BFD", S+"There is a humeral fracture.", ["humerus fracture"], True),
 ("BFD", S+"Fractures of the fingers.", ["finger fracture"], True),
 ("BFD", S+"A fracture of the finger, not the wrist.", ["finger fracture"], True),
 ("BFD", S+"Elbow fracture and wrist fracture.", ["elbow fracture", "wrist fracture"], True),
 ("BFD", S+"There is an elbow fracture and the wrist is normal.", ["elbow fracture"], True),
 ("BFD", S+"No wrist fracture; the elbow is fractured.", ["elbow fracture"], True),
 ("BFD", S+"Broken wrist.", ["wrist fracture"], True),
 ("BFD", S+"The shoulder fracture is unlikely; the humerus is fractured.", ["humerus fracture"], True),
 ("ChestX-Det", S+"Effusion, nodule and mass.", ["effusion", "mass", "nodule"], True),
 ("ChestX-Det", S+"No nodule or mass is seen; there is a pneumothorax.", ["pneumothorax"], True),
 ("ChestX-Det", S+"Pneumothorax.", ["pneumothorax"], True),
 ("ChestX-Det", S+"Calcified granuloma, i.e. calcification.", ["calcification"], True),
 ("ChestX-Det", S+"There is a rib fracture.", ["fracture"], True),
 ("ChestX-Det", S+"Consolidation in the right lower lobe with a pleural effusion.", ["consolidation", "effusion"], True),
 ("ChestX-Det", S+"A nodule. No diffuse nodules.", ["nodule"], True),
 ("ChestX-Det", S+"Bilateral diffuse nodules and a mass.", ["diffuse nodule", "mass"], True),
 ("ChestX-Det", S+"The diagnosis is atelectasis or effusion.", ["atelectasis"], False),
 ("ChestX-Det", S+"The heart is not enlarged; there is an effusion.", ["effusion"], True),
 ("ChestX-Det", S+"There is thickening of the pleura.", ["pleural thickening"], True),
 ("ChestX-Det", S+"There is a mass, effusion, and atelectasis.", ["atelectasis", "effusion", "mass"], True),
 ("ChestX-Det", S+"Emphysematous changes with fibrosis.", ["emphysema", "fibrosis"], True),
 ("FIVES", S+"Diabetic retinopathy.", ["diabetic retinopathy"], True),
 ("FIVES", S+"Normal.", ["normal"], True),
 ("FIVES", S+"The retina is normal; no glaucoma, AMD or diabetic retinopathy.", ["normal"], True),
 ("FIVES", S+"Glaucoma rather than AMD.", ["glaucoma"], True),
 ("FIVES", S+"The fundus is not normal; it shows glaucoma.", ["glaucoma"], True),
 ("FIVES", S+"Age-related macular degeneration.", ["age-related macular degeneration"], True),
 ("FIVES", S+"Possible glaucoma.", ["glaucoma"], False),
 ("FIVES", S+"There are no signs of disease.", ["normal"], True),
 ("FIVES", S+"Proliferative diabetic retinopathy is present, not glaucoma.", ["diabetic retinopathy"], True),
 ("FIVES", S+"DR is unlikely, the fundus looks healthy.", ["normal"], True),
 ("FIVES", S+"The image is consistent with glaucoma and not with diabetic retinopathy.", ["glaucoma"], True),
 ("BUSI", "It is [SEG]. Firstly, the modality of this image is ultrasound. Secondly, the lesion is oval, which is typical of benign tumors. Finally, the diagnosis is benign.", ["benign"], True),
 ("BUSI", "It is [SEG]. Firstly, the modality of this image is ultrasound. Secondly, the lesion is oval and benign-looking. Finally, the diagnosis is not benign but malignant.", ["malignant"], True),
 ("BUSI", S+"It is not unlikely that the lesion is malignant.", ["malignant"], False),
 ("BUSI", S+"It cannot be said that the lesion is not malignant.", ["malignant"], True),
 ("BUSI", S+"The lesion is not benign; it is not normal either. It is malignant.", ["malignant"], True),
 ("BUSI", S+"There is no reason to think it is malignant; benign.", ["benign"], True),
 ("BUSI", S+"Likely benign, possibly malignant.", ["benign"], False),
 ("BUSI", S+"Benign (not malignant).", ["benign"], True),
 ("BUSI", S+"Benign vs malignant: malignant.", ["malignant"], True),
 ("BUSI", S+"Is it benign or malignant? It is malignant.", ["malignant"], True),
 ("BUSI", S+"The lesion is suspicious, but benign.", ["benign"], True),
 ("BUSI", S+"While malignancy was considered, the final diagnosis is benign.", ["benign"], True),
 ("BUSI", S+"The diagnosis is malignant; benign is excluded.", ["malignant"], True),
 ("BUSI", S+"Normal.", ["normal"], True),
 ("BUSI", S+"Not normal: there is a malignant mass.", ["malignant"], True),
 ("TN3K", S+"The nodule is not definitely malignant.", ["malignant"], False),
 ("TN3K", S+"Nothing suggests malignancy; the nodule is benign.", ["benign"], True),
 ("TN3K", S+"Benign. Malignant features are not seen.", ["benign"], True),
 ("TN3K", S+"Malignant, with no benign features.", ["malignant"], True),
 ("ISIC", S+"The diagnosis is nevus, melanoma excluded.", ["nevus"], True),
 ("ISIC", S+"Neither melanoma nor seborrheic keratosis; a nevus.", ["nevus"], True),
 ("ISIC", S+"Melanoma, seborrheic keratosis, or nevus are possible.", ["nevus"], False),
 ("ISIC", S+"Seborrheic keratosis, not melanoma or nevus.", ["seborrheic keratosis"], True),
 ("ISIC", S+"I think it is a melanoma.", ["melanoma"], True),
 ("ISIC", S+"A melanoma cannot be excluded, but this is most consistent with a nevus.", ["nevus"], True),
 ("ChestX-Det", S+"A mass and diffuse nodules, but no effusion.", ["mass", "diffuse nodule"], True),
 ("ChestX-Det", S+"Nodule and diffuse nodule.", ["nodule", "diffuse nodule"], True),
 ("ChestX-Det", S+"No fracture. Pneumothorax.", ["pneumothorax"], True),
 ("ChestX-Det", S+"Findings: atelectasis, consolidation and effusion.", ["atelectasis", "consolidation", "effusion"], True),
 ("ChestX-Det", S+"Findings: atelectasis, consolidation and effusion.", ["atelectasis", "effusion"], False),
 ("ChestX-Det", S+"Calcification is present, as is a nodule.", ["calcification", "nodule"], True),
 ("ChestX-Det", S+"Neither effusion nor pneumothorax is present, only emphysema.", ["emphysema"], True),
 ("ChestX-Det", S+"There is pleural thickening; no pleural effusion.", ["pleural thickening"], True),
 ("ChestX-Det", S+"Pleural effusion rather than pleural thickening.", ["effusion"], True),
 ("ChestX-Det", S+"Cardiomegaly is absent; there is a mass in the left lung.", ["mass"], True),
 ("ChestX-Det", S+"The nodules are diffuse.", ["diffuse nodule"], True),
 ("FIVES", S+"There is no diabetic retinopathy and no glaucoma; this is age-related macular degeneration.", ["age-related macular degeneration"], True),
 ("FIVES", S+"Macular degeneration, not diabetic retinopathy.", ["age-related macular degeneration"], True),
 ("FIVES", S+"The fundus is normal except for glaucomatous optic disc changes.", ["glaucoma"], True),
 ("FIVES", S+"Not glaucoma.", ["normal"], False),
 ("FIVES", S+"No abnormality is detected.", ["normal"], True),
 ("FIVES", S+"Unremarkable fundus.", ["normal"], True),
 ("BFD", S+"No fracture of the elbow; the wrist is fractured.", ["wrist fracture"], True),
 ("BFD", S+"Fracture of the humerus and the shoulder.", ["humerus fracture", "shoulder fracture"], True),
 ("BFD", S+"A finger fracture is seen, but no wrist fracture.", ["finger fracture"], True),
 ("BFD", S+"It is not an elbow fracture but a forearm fracture.", ["forearm fracture"], True),
 ("BFD", S+"Shoulder or humerus fracture.", ["shoulder fracture"], False),
 ("FracAtlas", S+"No fracture? There is a fracture.", ["fracture"], True),
 ("FracAtlas", S+"The bone is not broken.", ["fracture"], False),
 ("FracAtlas", S+"A fracture is not excluded.", ["fracture"], False),
 ("FracAtlas", S+"Fracture present.", ["fracture"], True),
 ("FracAtlas", S+"Negative for fracture.", ["fracture"], False),
 ("BoneFracture", S+"There is a fracture, which is not displaced.", ["fracture"], True),
 ("BoneFracture", S+"No acute fracture is identified.", ["fracture"], False),
 ("Kvasir-SEG", S+"There is a large polyp, not a normal fold.", ["polyp"], True),
 ("Kvasir-SEG", S+"Polyp: no.", ["polyp"], False),
 ("Kvasir-SEG", S+"It might be a polyp.", ["polyp"], False),
 ("ISBI", S+"The lesion is malignant. Benign is unlikely.", ["malignant"], True),
 ("ISBI", S+"Melanoma is ruled out; the lesion is benign.", ["benign"], True),
 ("ISBI", S+"Not benign.", ["malignant"], True),
 ("TN3K", "It is [SEG]. Firstly, the modality of this image is ultrasound. Secondly, the nodule is hypoechoic with microcalcifications, features that suggest malignancy. Finally, the diagnosis is", ["malignant"], True),
]


def _fmt(answer: str) -> str:
    return "cot" if "Firstly" in answer else "diagnosis"


def test_audit_covers_every_subset() -> None:
    assert len(AUDIT) >= 60
    per = {name: sum(s == name for s, *_ in AUDIT) for name in M3DS_SUBSETS}
    assert min(per.values()) >= 5, per
    assert {g for *_, g in AUDIT} == {True, False}
    for subset, _, target, _ in AUDIT + DEVELOPMENT:  # every target is a label of its subset
        assert set(target) <= set(M3DS_SUBSETS[subset].labels)


@pytest.mark.parametrize("mode", ["format", "auto"])
def test_rule_agrees_with_the_graded_answers(mode: str) -> None:
    disagreements = []
    for subset, answer, target, graded in AUDIT + DEVELOPMENT:
        vocab = M3DS_SUBSETS[subset]
        fmt = _fmt(answer) if mode == "format" else "auto"
        if diagnosis_correct(answer, target, vocab, fmt) is not graded:
            disagreements.append(f"{subset}: {answer!r} target {target} graded {graded}; rule states "
                                 f"{extract_labels(answer, vocab, fmt)}")
    n = len(AUDIT) + len(DEVELOPMENT)
    agreement = 1 - len(disagreements) / n
    print(f"\ndiagnosis audit ({mode}): {n - len(disagreements)}/{n} agree = {agreement:.1%}")
    print("\n".join(disagreements))
    assert agreement >= 0.95, "\n".join(disagreements)
