"""Word lists and morphology of the diagnosis rule (:mod:`sim4seg.metrics.diagnosis`).

Everything here is lower case and already tokenised the way the rule tokenises answers (hyphens and other
punctuation split words, "n't" and "cannot" become "not"/"can not"). The lists describe English, not one
dataset: a subset only brings its labels and synonyms, and :func:`forms` derives the inflections.
"""

from __future__ import annotations

# Cue phrases, by what they do to the label mentions they reach (see the diagnosis module's docstring).
# "neg": negates forward (the next mention in scope, and a list joined to it);
# "either": negates forward if a mention follows in scope, else backward (the mention just before it);
# "back": negates backward only; "tight": negates only the word right after it ("non-malignant");
# "hedge"/"hedge_either": the same reach, but the mention becomes uncommitted instead of negated;
# "neutral": idioms that contain a negator but negate nothing ("no doubt").
CUES: dict[str, tuple[str, ...]] = {
    "neg": ("no", "not", "nothing", "none", "without", "nor", "neither", "never", "absence of", "lack of", "lacks", "lacking",
            "negative for", "free of", "rule out", "rules out", "ruling out", "excludes", "excluding",
            "rather than", "instead of", "as opposed to", "against", "exclusion of"),
    "either": ("unlikely", "improbable", "excluded", "ruled out", "less likely", "not likely", "absent",
               "not seen", "not present", "not identified", "not detected", "not evident", "not visible",
               "not noted", "not observed", "not found", "not demonstrated", "not shown", "not apparent",
               "not suspected", "not favoured", "not favored", "not supported", "not confirmed",
               "not the diagnosis", "not the case", ": no", ": none", ": negative", ": absent"),
    "back": ("negative", "intact", "free"),
    "tight": ("non",),
    "hedge": ("may", "might", "could", "possibly", "possible", "perhaps", "maybe", "questionable", "equivocal",
              "indeterminate", "uncertain", "unclear", "whether", "if", "differential", "not exclude",
              "not rule out", "borderline", "query"),
    "hedge_either": ("versus", "vs", "not excluded", "not ruled out", "not be excluded", "not be ruled out",
                     "not unlikely", "not impossible"),
    "neutral": ("no doubt", "without doubt", "without a doubt", "no question", "not only", "not without",
                "not absent", "no longer"),
}
# Negators of a property whose reach, with nothing but an article between, makes a label's opposite stated
# (``ANTONYMS``): "not malignant" is benign, but "no malignant lesion" may be no lesion at all.
TIGHT_NEGATORS = frozenset({"not", "non", "never"})
ARTICLES = frozenset({"a", "an", "the", "any"})

# Words that end a negator's or hedge's reach, and split an answer into segments (contrast and concession).
CONTRAST = frozenset({"but", "however", "yet", "instead", "actually", "rather", "nevertheless", "nonetheless",
                      "still", "conversely", "except", "apart"})
CONCESSIVE = frozenset({"although", "though", "while", "whereas", "despite", "albeit"})
BREAKERS = CONTRAST | CONCESSIVE | frozenset({"and", "so", "therefore", "thus", "hence", "because", "since"})
# A segment with one of these states the conclusion: its first stated label replaces what came before.
CONCLUSION = frozenset({"diagnosis", "impression", "conclusion", "overall", "therefore", "thus", "hence", "so",
                        "finally", "ultimately", "summary", "fact", "this", "here"})
# ... unless it adds to it.
ADDITIVE = frozenset({"also", "additionally", "addition", "furthermore", "moreover", "too", "another", "besides",
                      "plus", "well", "both", "further"})
# Joining words of a list of labels ("effusion, nodule or mass"); DISJUNCTION marks an alternative.
LIST_WORDS = frozenset({",", "or", "and", "either", "/"})
DISJUNCTION = frozenset({"or", "/", "versus", "vs"})
PUNCTUATION = frozenset({",", ";", ":", "(", ")", "/"})
# A word order like "fracture of the wrist" / "the wrist is fractured" needs one of these between the words.
LINKS = frozenset({"of", "in", "at", "on", "involving", "affecting", "to", "within", "near", "around", "from",
                   "is", "are", "was", "were", "be", "appears", "seems", "looks", "shows", "has", "with"})
SAME_CLAUSE_GAP = 4  # at most this many words between a modifier and its head ("fracture of the left wrist")
REACH = 8            # at most this many words between a negator or hedge and the mention it reaches

# Synonyms that hold for any subset having the label (the subset's own synonyms are added to these).
CONCEPTS: dict[str, tuple[str, ...]] = {
    "malignant": ("cancer", "cancerous", "carcinoma", "carcinomatous", "melanoma", "sarcoma", "lymphoma",
                  "metastasis", "metastatic"),
    "benign": ("fibroadenoma", "nevus", "naevus", "mole", "seborrheic keratosis",
               "seborrhoeic keratosis"),
    "normal": ("healthy", "unremarkable", "within normal limits"),
    "fracture": ("broken bone", "bone break"),
    "polyp": ("polypoid", "polypoid lesion", "adenomatous polyp"),
    "nevus": ("naevus", "mole", "melanocytic nevus"),
    "seborrheic keratosis": ("seborrhoeic keratosis",),
    "effusion": ("pleural effusion", "pleural fluid", "hydrothorax"),
    "cardiomegaly": ("enlarged heart", "cardiac enlargement", "enlarged cardiac silhouette", "heart enlargement"),
    "age-related macular degeneration": ("amd", "armd", "macular degeneration"),
    "diabetic retinopathy": ("dr", "retinopathy", "diabetic eye disease"),
}
# Words that mean a label word wherever that word is in a label ("broken wrist" is "wrist fracture").
WORD_SYNONYMS: dict[str, tuple[str, ...]] = {"fracture": ("broken", "break", "cracked", "crack")}
# Pairs where negating one label (tightly) states the other: "non-malignant" is "benign".
ANTONYMS = {"benign": "malignant", "malignant": "benign"}
# Labels that mean "no disease": any other stated label wins over them ("the optic disc is normal, but ...").
ABSENCE_LABELS = frozenset({"normal", "healthy", "no finding"})
# A label right before one of these describes evidence, not the diagnosis ("benign features dominate"): it
# counts only when the answer states no label otherwise.
EVIDENCE = frozenset({"feature", "features", "characteristics", "appearance", "appearing", "looking", "pattern",
                      "patterns", "sign", "signs", "morphology", "findings", "criteria", "traits", "component",
                      "components", "like"})
# Negating one of these states the absence label: "no abnormality", "no evidence of disease".
ABNORMAL = ("abnormal", "abnormality", "abnormalities", "pathology", "pathological", "disease", "lesion",
            "lesions", "pathologic", "anomaly")


def forms(word: str) -> set[str]:
    """Inflections and derived adjectives/nouns of one label word, itself included.

    Rules by ending (each adds forms, none removes): plural ``-s``/``-es``/``-ies``/``-i`` (nevus: nevi)/
    ``-es`` for ``-is`` (keratosis: keratoses)/``-aces`` (pneumothorax: pneumothoraces); ``-ant``: ``-ancy``,
    ``-ancies``, ``-ance`` (malignant: malignancy); ``-e``: ``-ed``, ``-ing``, ``-ely`` (fracture: fractured);
    ``-ule``: ``-ular`` (nodule: nodular); ``-sis``: ``-tic`` (fibrosis: fibrotic); ``-a``: ``-atous``, ``-as``
    (glaucoma: glaucomatous); ``-ation``: ``-ated``, ``-ative`` (consolidation: consolidated, degeneration:
    degenerative); ``-ification``: ``-ified`` (calcification: calcified); ``-al``/``-ar``: ``-a`` (pleural:
    pleura, macular: macula), ``-ality``; ``-ic``: ``-es`` (diabetic: diabetes); ``-us``: ``-al`` (humerus:
    humeral); ``-ing``: ``-ed`` (thickening: thickened); ``-ign``: ``-ity``, ``-ancy`` (benign: benignity).
    """
    w = word
    out = {w, w + "s", w + "es"}
    rules: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("y", ("ies", "ic")), ("us", ("i", "al")), ("is", ("es",)), ("sis", ("tic",)), ("ax", ("aces",)),
        ("a", ("atous", "as", "ae", "ata")), ("ant", ("ancy", "ancies", "ance")), ("ent", ("ency", "ence")),
        ("e", ("ed", "ing", "ely")), ("ule", ("ular",)), ("ation", ("ated", "ative", "ations")),
        ("ification", ("ified",)), ("al", ("a", "ality")), ("ar", ("a",)), ("ic", ("es",)),
        ("ing", ("ed", "ings")), ("ign", ("ity", "ancy")),
    )
    for ending, replacements in rules:
        if w.endswith(ending) and len(w) > len(ending) + 2:
            stem = w[: -len(ending)]
            for r in replacements:
                out.add(stem + r)
    if w.endswith("e"):
        out.add(w + "d")
    return out
