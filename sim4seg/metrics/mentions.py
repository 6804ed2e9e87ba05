"""Label mentions in an answer: tokens, the subset's phrase table with inflections, and word-order matching.

Used by :mod:`sim4seg.metrics.diagnosis` (steps 2 and 3 of its docstring); word lists in :mod:`.lexicon`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from sim4seg.data.vocab import Subset
from sim4seg.metrics import lexicon as lx

ABNORMAL = "<abnormal>"  # pseudo label: negated, it states the subset's absence label

SEG = re.compile(re.escape("[SEG]"), re.IGNORECASE)
_NOT = re.compile(r"n[’']t\b")
_APOSTROPHE = re.compile(r"[’']")
_CANNOT = re.compile(r"\b(?:cannot|can not|ca not)\b")
TOKEN = re.compile(r"[a-z0-9]+|[,;:()/]")
# normalize_text: anything but letters/digits/whitespace/in-word hyphens becomes a space.
_PUNCT = re.compile(r"[^\w\s-]|_")
_LOOSE_HYPHEN = re.compile(r"(?<![^\W_])-|-(?![^\W_])")


def prepare(text: str) -> str:
    text = SEG.sub(" ", text.lower())
    return _CANNOT.sub("can not", _APOSTROPHE.sub("", _NOT.sub(" not", text)))


def normalize_text(text: str) -> str:
    """Lower case, punctuation stripped (hyphens inside words kept), whitespace collapsed (for display)."""
    return " ".join(_LOOSE_HYPHEN.sub(" ", _PUNCT.sub(" ", prepare(text))).split())


def phrase_words(phrase: str) -> list[str]:
    return TOKEN.findall(prepare(phrase))


@dataclass(frozen=True)
class Lexicon:
    base: dict[str, str]                                   # text word -> the label word it is a form of
    phrases: dict[tuple[str, ...], str]                    # label words -> canonical label
    heads: dict[str, list[tuple[tuple[str, ...], str]]]    # head word -> [(modifier words, label)]
    mods: frozenset[str]                                   # modifier words of multi-word phrases
    max_len: int
    absence: str | None                                    # the subset's "normal" label, if any


def _cues() -> tuple[dict[tuple[str, ...], str], int]:
    table = {tuple(phrase_words(p)): kind for kind, phrases in lx.CUES.items() for p in phrases}
    return table, max(map(len, table))


CUE_TABLE, CUE_MAX = _cues()
_CUE_WORDS = frozenset(w for p in CUE_TABLE for w in p)
HEDGE_WORDS = frozenset(p[0] for p, k in CUE_TABLE.items() if k.startswith("hedge") and len(p) == 1)


@lru_cache(maxsize=256)
def _compile(labels: tuple[str, ...], synonyms: tuple[tuple[str, str], ...]) -> Lexicon:
    entries = [(syn, label) for label in labels for syn in lx.CONCEPTS.get(label, ())]
    absence = next((label for label in labels if label in lx.ABSENCE_LABELS), None)
    if absence:
        entries += [(w, ABNORMAL) for w in lx.ABNORMAL]
    entries += list(synonyms) + [(label, label) for label in labels]  # a label is always itself
    raw = [(tuple(phrase_words(p)), label) for p, label in entries]
    words = {w for p, _ in raw for w in p}
    base: dict[str, str] = {}
    for w in sorted(words):
        for syn in lx.WORD_SYNONYMS.get(w, ()):
            base.update(dict.fromkeys(lx.forms(syn), w))
        base.update({f: w for f in lx.forms(w) if f not in words})
    base.update({w: w for w in words})
    phrases = {tuple(base[w] for w in p): label for p, label in raw if p}
    heads: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for p, label in phrases.items():
        if len(p) > 1 and label != ABNORMAL and not set(p) & (_CUE_WORDS | lx.LINKS | lx.ARTICLES):
            heads.setdefault(p[-1], []).append((p[:-1], label))
    for options in heads.values():
        options.sort(key=lambda o: (-len(o[0]), o))
    mods = frozenset(w for options in heads.values() for m, _ in options for w in m)
    return Lexicon(base, phrases, heads, mods, max(map(len, phrases)), absence)


def lexicon_of(vocabulary: Subset) -> Lexicon:
    return _compile(tuple(vocabulary.labels), tuple(sorted(vocabulary.synonyms.items())))


@dataclass
class Mention:
    label: str
    start: int
    end: int
    neg: int = 0
    hedge: bool = False
    tight: bool = False
    first: bool = False  # the first mention a negator reaches (not one of the list after it)
    evidence: bool = False  # "benign features": a description, not a diagnosis


def split_non(tokens: list[str], lex: Lexicon) -> list[str]:
    out: list[str] = []
    for t in tokens:  # "nonmalignant" is "non malignant" when the rest is a label word
        out += ["non", t[3:]] if t.startswith("non") and len(t) > 5 and t[3:] in lex.base else [t]
    return out


def _gap_ok(b: list[str], used: list[bool], lo: int, hi: int, lex: Lexicon, head: str) -> bool:
    gap = range(lo, hi)
    mods = sum(b[j] in lex.mods for j in gap)
    for j in gap:
        t = b[j]
        if t in lx.PUNCTUATION - {","} or (t in lx.BREAKERS and t != "and"):
            return False
        if t in (",", "and", "or") and not mods:
            return False  # "diffuse, nodule" is not "diffuse nodule"
        if used[j] and t not in lex.mods and t != head:
            return False
    return len(gap) - mods - sum(b[j] in lx.LIST_WORDS for j in gap) <= lx.SAME_CLAUSE_GAP


def _find_mod(b: list[str], used: list[bool], h: int, mod: str, lex: Lexicon) -> int | None:
    for d in range(1, 3 * lx.SAME_CLAUSE_GAP):
        for j in (h - d, h + d):
            if 0 <= j < len(b) and b[j] == mod:
                lo, hi = (j + 1, h) if j < h else (h + 1, j)
                if _gap_ok(b, used, lo, hi, lex, b[h]) and (j < h or hi == lo or lx.LINKS & set(b[lo:hi])):
                    return j
    return None


def find_mentions(tokens: list[str], lex: Lexicon) -> tuple[list[Mention], list[bool]]:
    b = [lex.base.get(t, t) for t in tokens]
    n, used, found = len(b), [False] * len(b), []
    i = 0
    while i < n:  # contiguous phrases of two or more words, longest first
        k = next((k for k in range(min(lex.max_len, n - i), 1, -1) if tuple(b[i:i + k]) in lex.phrases), 0)
        if k:
            found.append(Mention(lex.phrases[tuple(b[i:i + k])], i, i + k))
            used[i:i + k] = [True] * k
        i += max(k, 1)
    for h in range(n):  # a modifier and its head in another order
        for mods, label in lex.heads.get(b[h], ()):
            pos = [_find_mod(b, used, h, m, lex) for m in mods]
            if None in pos or all(used[p] for p in pos):
                continue
            found.append(Mention(label, min(pos + [h]), max(pos + [h]) + 1))
            for p in pos + [h]:
                used[p] = True
    for i in range(n):
        if not used[i] and (b[i],) in lex.phrases:
            found.append(Mention(lex.phrases[(b[i],)], i, i + 1))
            used[i] = True
    for m in found:
        m.evidence = m.end < n and tokens[m.end] in lx.EVIDENCE
    return sorted(found, key=lambda m: (m.start, m.end)), used
