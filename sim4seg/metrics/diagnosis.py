"""Diagnosis accuracy: does an answer state exactly the target labels? (Our rule; the paper publishes none.)

A clinician reading the answer would count it correct when it states the target, commits to it, and states no
other label of the subset. The rule does that deterministically, in five steps (word lists: ``lexicon.py``):

1. Span. Candidates, in order: the text after the last "finally" (``fmt`` "cot" or "auto"); the text after the
   last ``[SEG]``, then the text before it (``fmt`` "diagnosis" or "auto"); the whole answer. The first
   candidate that mentions a label of the subset is the span, so "It is [SEG]. The diagnosis is benign." and
   "The diagnosis is benign. [SEG]." read the same.
2. Words. Lower case; "n't" and "cannot" become "not"/"can not"; hyphens and other punctuation split words
   ("non-malignant" is "non malignant"); ``, ; : ( ) /`` stay as tokens; sentences end at ``. ! ?`` followed
   by a space or the end, or at a newline.
3. Mentions. The subset's labels, its synonyms, and synonyms that hold for any subset with that label
   (``CONCEPTS``: "malignancy" ... "carcinoma" for malignant) form a phrase table; each label word also matches
   its inflections (``forms``: malignancy, fractured, nodules, fibrotic, glaucomatous ...). Contiguous phrases
   are taken longest first; then a modifier and its head in another order ("fracture of the left wrist",
   "wrist and elbow fractures", "the wrist is fractured": at most 4 other words between them, a linking word
   when the head comes first); then single words. Matched words are consumed ("diffuse nodule" is not also
   "nodule").
4. Status of each mention: stated, negated or uncertain.
   - A negator ("no", "not", "without", "rather than", "ruling out", "instead of", ...) reaches the next
     mention of its clause (no clause punctuation or contrast word such as "but"/"although"/"and" between,
     at most 8 words: "no evidence at all of diabetic retinopathy") and the list joined to it ("no effusion,
     nodule or mass"). "unlikely", "excluded", "ruled out", "absent", "not seen" ... reach forward the same
     way, or else back to the mention just before them ("a malignant tumor is unlikely"); "negative",
     "intact" only back; "non" only the next word. Two negators on one mention cancel ("not non-malignant").
   - A hedge ("may", "could", "possibly", "cannot exclude", "versus", ...) reaches like a negator and makes
     the mention uncertain; so do questions, unless the next sentence begins with "yes". Alternatives of
     different labels ("benign or possibly malignant", "either a nevus or a melanoma") are uncertain.
     Idioms such as "no doubt" and "not only" negate nothing.
   - A tight negation (``not``/``non``/``never`` with at most an article before the label) of one of
     a pair of opposite labels present in the subset states the other ("non-malignant", "not cancerous" are
     benign), and so does any negation when those two are the subset's only labels ("no evidence of
     malignancy" in TN3K), unless the answer mentions that other label itself; negating "abnormality", "disease",
     "lesion" ... states the subset's "normal" label ("no abnormality").
5. Decision. Mentions are read in order; a stated one adds its label, a negated one removes it (a later
   "no fracture" retracts an earlier "fracture"). A segment that opens with a contrast word ("but",
   "however") or names the conclusion ("diagnosis", "therefore", "this", "overall" ...) replaces what came
   before with the labels it states, unless it adds to them ("also", "in addition"); a concessive segment
   ("although it looks benign, ...") states nothing when its sentence states something else. A label meaning
   no disease ("normal") gives way to any other stated label, and a label that describes evidence ("benign
   features", "malignant-appearing") gives way to one that does not. Correct iff the stated set equals the target
   set: hedges, lists of alternatives and answers without a diagnosis are wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sim4seg.data.vocab import Subset
from sim4seg.metrics import lexicon as lx
from sim4seg.metrics.mentions import (
    ABNORMAL,
    CUE_MAX,
    CUE_TABLE,
    HEDGE_WORDS,
    SEG,
    TOKEN,
    Mention,
    find_mentions,
    lexicon_of,
    normalize_text,
    phrase_words,
    prepare,
    split_non,
)

DIAGNOSIS_FORMATS = ("auto", "cot", "diagnosis")
DIAGNOSIS_RULE_VERSION = 2  # bump when the rule changes, so stored evaluations are not reused across rules
_FINALLY = re.compile(r"\bfinally\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")

@dataclass
class _Sentence:
    tokens: list[str]
    question: bool
    mentions: list[Mention] = field(default_factory=list)



@dataclass(frozen=True)
class LabelMatch:
    """One label mention in the span: sentence index, token range ``[start, end)`` in it, and its status."""

    label: str
    sentence: int
    start: int
    end: int
    status: str  # "stated" | "negated" | "uncertain"
    inferred: bool = False  # stated by negating its opposite ("non-malignant" -> benign)
    evidence: bool = False  # followed by "features", "appearance" ...: counts only if nothing else is stated

    @property
    def negated(self) -> bool:
        return self.status == "negated"


def _list_gap(tokens: list[str], lo: int, hi: int, cue_at: set[int], after: int) -> bool:
    gap = tokens[lo:hi]
    if any(j in cue_at for j in range(lo, hi)):
        return False  # "neither A nor B": "nor" negates B itself
    allowed = lx.LIST_WORDS | (lx.ARTICLES if lx.DISJUNCTION & set(gap) else frozenset())
    if gap == [","] and after < len(tokens) and tokens[after] in lx.LINKS:
        return False  # "no sign of nodule, effusion is noted": a new clause, not a list
    return all(t in allowed for t in gap)


def _chain(t: list[str], ordered: list[Mention], cue_at: set[int], backward: bool) -> list[Mention]:
    """The mention a cue reaches and the list joined to it; a list ends with a conjunction ("A, B or C")."""
    chain, gaps = ordered[:1], []
    for m in ordered[1:]:
        prev = chain[-1]
        if not backward and m.start < prev.end:  # a word-order mention inside the previous one
            gap = ["and"]
        else:
            lo, hi = (m.end, prev.start) if backward else (prev.end, m.start)
            if not _list_gap(t, lo, hi, cue_at, len(t) if backward else m.end):
                break
            gap = t[lo:hi]
        chain.append(m)
        gaps.append(gap)
    if backward:  # the link nearest the cue ends the list in reading order
        return chain[:1] if gaps and gaps[0] and set(gaps[0]) <= {","} else chain
    while gaps and gaps[-1] and set(gaps[-1]) <= {","}:
        gaps.pop()
        chain.pop()
    return chain


def _apply_cues(s: _Sentence, used: list[bool]) -> None:
    t, ms = s.tokens, s.mentions
    cues, i = [], 0
    while i < len(t):
        k = next((k for k in range(min(CUE_MAX, len(t) - i), 0, -1)
                  if not any(used[i:i + k]) and tuple(t[i:i + k]) in CUE_TABLE), 0)
        if k:
            cues.append((CUE_TABLE[tuple(t[i:i + k])], i, i + k))
        i += max(k, 1)
    cue_at = {j for _, a, e in cues for j in range(a, e)}

    def clear(lo: int, hi: int, limit: int) -> bool:
        gap = t[lo:hi]
        return len(gap) <= limit and not (set(gap) & (lx.PUNCTUATION | lx.BREAKERS))

    for kind, a, e in cues:
        if kind == "neutral":
            continue
        chain: list[Mention] = []
        if kind != "back":
            after = [m for m in ms if m.start < a < m.end or (m.start >= e and clear(
                e, m.start, 0 if kind == "tight" else lx.REACH))]
            if after and after[0].label == ABNORMAL and len(after) > 1:
                chain.append(after.pop(0))  # "not unlikely that the lesion is malignant": both
            if after:
                target = after[0]
                target.first = True
                if kind in ("neg", "tight") and t[a] in lx.TIGHT_NEGATORS and e - a == 1 and \
                        set(t[e:target.start]) <= lx.ARTICLES and target.start - e <= 1:
                    target.tight = True
                start = next(i for i, m in enumerate(ms) if m is target)
                chain += _chain(t, ms[start:], cue_at, backward=False)
        if not chain and kind in ("either", "back", "hedge_either"):
            before = [m for m in ms if m.end <= a]
            if before and clear(before[-1].end, a, 6):
                chain = _chain(t, before[::-1], cue_at, backward=True)
        for m in chain:
            if kind.startswith("hedge"):
                m.hedge = True
            else:
                m.neg += 1


def _disjunctions(s: _Sentence) -> None:
    """Mark alternatives of different labels ("benign or possibly malignant", "A, maybe B") uncertain."""
    ms, t = s.mentions, s.tokens
    groups: list[list[Mention]] = []
    for i, m in enumerate(ms):
        gap = t[ms[i - 1].end:m.start] if i else []
        joined = set(gap) & lx.DISJUNCTION or (set(gap) & HEDGE_WORDS and "and" not in gap)  # "A, possibly B"
        if i and joined and set(gap) <= lx.LIST_WORDS | lx.ARTICLES | lx.DISJUNCTION | HEDGE_WORDS:
            groups[-1].append(m)
        else:
            groups.append([m])
    for g in groups:
        if len({m.label for m in g}) > 1:
            for m in g:
                m.hedge = m.hedge or m.neg % 2 == 0


def _status(m: Mention, question: bool) -> str:
    return "uncertain" if m.hedge or question else "negated" if m.neg % 2 else "stated"


def _analyse(text: str, vocabulary: Subset) -> list[_Sentence]:
    lex = lexicon_of(vocabulary)
    sentences = []
    for piece in _SENTENCE_END.split(prepare(text)):
        tokens = split_non(TOKEN.findall(piece), lex)
        if not tokens:
            continue
        s = _Sentence(tokens, piece.rstrip().endswith("?"))
        s.mentions, used = find_mentions(tokens, lex)
        _apply_cues(s, used)
        _disjunctions(s)
        sentences.append(s)
    return sentences


def _matches(sentences: list[_Sentence], vocabulary: Subset) -> list[LabelMatch]:
    lex = lexicon_of(vocabulary)
    explicit = {m.label for s in sentences for m in s.mentions}
    out: list[LabelMatch] = []
    for si, s in enumerate(sentences):
        for m in s.mentions:
            status = _status(m, s.question)
            if m.label != ABNORMAL:
                out.append(LabelMatch(m.label, si, m.start, m.end, status, evidence=m.evidence))
            opposite = lx.ANTONYMS.get(m.label)
            binary = set(vocabulary.labels) == {m.label, opposite}  # there, any "not X" is "Y"
            if status == "negated" and (m.tight or binary) and opposite in vocabulary.labels \
                    and opposite not in explicit:
                out.append(LabelMatch(opposite, si, m.start, m.end, "stated", inferred=True))
            if status == "negated" and m.label == ABNORMAL and m.first and lex.absence:
                out.append(LabelMatch(lex.absence, si, m.start, m.end, "stated", inferred=True))
    return out


def _segments(tokens: list[str]) -> list[int]:
    """Segment number of each token: a new segment at a contrast/concessive word or ``;``/``:``."""
    seg, out, concessive = 0, [], False
    for i, t in enumerate(tokens):
        if i and (t in lx.CONTRAST or t in lx.CONCESSIVE or t in (";", ":") or (t == "," and concessive)):
            seg += 1
            concessive = t in lx.CONCESSIVE
        elif not i:
            concessive = t in lx.CONCESSIVE
        out.append(seg)
    return out


def _decide(sentences: list[_Sentence], matches: list[LabelMatch]) -> set[str]:
    state: dict[str, tuple[int, int]] = {}  # label -> (sentence, segment) where it was stated
    diagnosed: set[str] = set()  # labels stated at least once not as evidence
    asked: set[str] = set()
    for si, s in enumerate(sentences):
        segs = _segments(s.tokens)
        words: dict[int, set[str]] = {}
        for t, g in zip(s.tokens, segs, strict=True):
            words.setdefault(g, set()).add(t)
        first = {g: s.tokens[segs.index(g)] for g in words}
        concessive = {g for g in words if first[g] in lx.CONCESSIVE}
        mine = [m for m in matches if m.sentence == si]
        plain = any(m.status == "stated" and segs[m.start] not in concessive for m in mine)
        if asked and s.tokens[0] == "yes":
            state.update(dict.fromkeys(asked, (si, -1)))
        asked = {m.label for m in mine if m.status == "uncertain"} if s.question else set()
        cleared: set[int] = set()
        for m in mine:
            g = segs[m.start]
            if m.status == "negated":
                state.pop(m.label, None)
            elif m.status == "stated" and not (g in concessive and plain):
                overrides = first[g] in lx.CONTRAST or words[g] & lx.CONCLUSION
                if overrides and not words[g] & lx.ADDITIVE and g not in cleared:
                    state = {k: v for k, v in state.items() if v == (si, g)}
                    cleared.add(g)
                state[m.label] = (si, g)
                if not m.evidence:
                    diagnosed.add(m.label)
    stated = set(state) & diagnosed or set(state)
    if len(stated) > 1:
        stated -= lx.ABSENCE_LABELS
    return stated


def _candidates(answer: str, fmt: str) -> list[str]:
    if fmt not in DIAGNOSIS_FORMATS:
        raise ValueError(f"answer format {fmt!r} is not one of {DIAGNOSIS_FORMATS}")
    out = []
    fin = list(_FINALLY.finditer(answer)) if fmt in ("auto", "cot") else []
    if fin:
        out.append(answer[fin[-1].end():])
    seg = list(SEG.finditer(answer)) if fmt in ("auto", "diagnosis") else []
    if seg:
        out += [answer[seg[-1].end():], answer[:seg[-1].start()]]
    return out + [answer]


def _span(answer: str, fmt: str, vocabulary: Subset | None) -> tuple[str, list[_Sentence], list[LabelMatch]]:
    for text in _candidates(answer, fmt):
        if vocabulary is None:
            if phrase_words(text):
                return text, [], []
            continue
        sentences = _analyse(text, vocabulary)
        matches = _matches(sentences, vocabulary)
        if matches:
            return text, sentences, matches
    return answer, [], []


def diagnosis_span(answer: str, fmt: str = "auto", vocabulary: Subset | None = None) -> str:
    """The normalised part of ``answer`` read as the diagnosis (step 1 of the module docstring).

    Without ``vocabulary`` a candidate is taken when it has any word; with it, when it mentions a label.
    """
    return normalize_text(_span(answer, fmt, vocabulary)[0])


def label_matches(answer: str, vocabulary: Subset, fmt: str = "auto") -> list[LabelMatch]:
    """Every label mention in the span with its status, inferred ones included (for debugging the rule)."""
    return _span(answer, fmt, vocabulary)[2]


def extract_labels(answer: str, vocabulary: Subset, fmt: str = "auto") -> list[str]:
    """The labels the answer states (module docstring, step 5), canonical, sorted, unique."""
    _, sentences, matches = _span(answer, fmt, vocabulary)
    return sorted(_decide(sentences, matches))


def normalize_answer(text: str, vocabulary: Subset) -> str:
    """The answer's words with every contiguous label/synonym mention replaced by its canonical label."""
    out = []
    for s in _analyse(text, vocabulary):
        pos = 0
        for m in s.mentions:
            if m.start >= pos and m.label != ABNORMAL:
                out += s.tokens[pos:m.start] + [m.label]
                pos = m.end
        out += s.tokens[pos:]
    return " ".join(w for w in out if w not in lx.PUNCTUATION)


def canonical_label(label: str, vocabulary: Subset) -> str:
    """A label or synonym as the subset's canonical label; ``ValueError`` when the subset has no such label."""
    lex = lexicon_of(vocabulary)
    found = lex.phrases.get(tuple(lex.base.get(w, w) for w in split_non(phrase_words(label), lex)))
    if found is None or found == ABNORMAL:
        raise ValueError(f"{label!r} is not a label of subset {vocabulary.name!r} "
                         f"(labels: {', '.join(vocabulary.labels)})")
    return found


def diagnosis_correct(answer: str, target: Sequence[str], vocabulary: Subset, fmt: str = "auto") -> bool:
    """True iff the answer states exactly the target labels (module docstring); targets may be synonyms."""
    if isinstance(target, str):  # a bare string would be read as a list of characters
        target = [target]
    wanted = {canonical_label(t, vocabulary) for t in target}
    return set(extract_labels(answer, vocabulary, fmt)) == wanted
