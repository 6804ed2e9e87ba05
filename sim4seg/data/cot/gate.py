"""What the two roles are asked, and how their answers are judged: the medical assistant's and the critic's
prompts, the rule gate (:func:`check_cot`) and the critic's verdict (:func:`parse_verdict`)."""

from __future__ import annotations

import re
from dataclasses import replace

from sim4seg.data.prompts import join_labels
from sim4seg.data.schema import NORMAL, Record
from sim4seg.data.vocab import Subset
from sim4seg.metrics import diagnosis_correct, extract_labels
from sim4seg.model.tokens import IMAGE_TOKEN, SEG_TOKEN


def diagnosis_text(rec: Record) -> str:
    return join_labels(rec.diagnosis, "and")


def assistant_prompt(rec: Record, subset: Subset, feedback: str | None = None, previous: str | None = None) -> str:
    """The structured prompt of the medical assistant: question + known diagnosis -> three-step CoT."""
    dx = diagnosis_text(rec)
    organ = f" of the {subset.organ}" if subset.organ else ""
    text = (
        f"You are an experienced medical imaging expert. This is a {rec.modality} image{organ}.\n"
        f"Question: {rec.query}\n"
        f"The confirmed diagnosis is: {dx}.\n"
        f"Explain step by step how this image leads to the diagnosis, in exactly three sentences:\n"
        f"1. Identify the image modality, starting with \"Firstly, the modality of this image is\".\n"
        f"2. Analyse the image, starting with \"Secondly, the image analysis shows\", describing the visible "
        f"{subset.finding} (location, size, shape, margins, intensity or colour) that supports the diagnosis.\n"
        f"3. Conclude with exactly \"Finally, the diagnosis is {dx}.\"\n"
        "Do not say that the diagnosis was given to you and do not add anything else."
    )
    if feedback:
        text += f"\n\nA reviewer rejected your previous answer because: {feedback}"
        if previous:
            text += f"\nYour previous answer was: \"{previous}\""
        text += "\nWrite a new answer that fixes this."
    return text


def critic_prompt(rec: Record, subset: Subset, cot: str) -> str:
    """The critic assistant's prompt: judge one CoT against the image and the known diagnosis."""
    return (
        f"You are a critical senior medical reviewer. This is a {rec.modality} image"
        f"{f' of the {subset.organ}' if subset.organ else ''}.\n"
        f"Question: {rec.query}\n"
        f"The confirmed diagnosis is: {diagnosis_text(rec)}.\n"
        f"A medical assistant wrote this diagnostic reasoning for the image:\n\"{cot}\"\n"
        "Check that (1) the modality is correct, (2) the image analysis describes findings that are visible in "
        "this image and consistent with the diagnosis, and (3) the reasoning leads to the diagnosis without "
        "contradictions or invented details.\n"
        "Reply with ACCEPT or REJECT as the first word, followed by a colon and a one-sentence reason."
    )


_PARTS = (("firstly", "the modality sentence \"Firstly, ...\""),
          ("secondly", "the image-analysis sentence \"Secondly, ...\""),
          ("finally", "the diagnosis sentence \"Finally, the diagnosis is ...\""))
_MIN_PART_WORDS = 3


def clean_cot(text: str) -> str:
    """Assistant output -> candidate CoT: markdown emphasis dropped, whitespace collapsed, chatter before
    "Firstly" and surrounding quotes removed."""
    text = " ".join(text.replace("**", "").replace("__", "").split())
    m = re.search(r"\bfirstly\b", text, re.IGNORECASE)
    if m:
        text = text[m.start():]
    return text.strip().strip("\"'`“”").strip()


def check_cot(cot: str, diagnosis: list[str], subset: Subset) -> str | None:
    """The rule gate: ``None`` when ``cot`` has the three parts in order and ends in exactly the known diagnosis,
    else a one-line reason (fed back to the assistant)."""
    if not cot.strip():
        return "the answer is empty"
    if SEG_TOKEN.lower() in cot.lower() or IMAGE_TOKEN in cot:
        return f"the answer contains the reserved token {SEG_TOKEN} or {IMAGE_TOKEN}"
    starts = []
    for word, what in _PARTS:
        m = re.search(rf"\b{word}\b", cot, re.IGNORECASE)
        if m is None:
            return f"it lacks {what}"
        starts.append((m.start(), m.end()))
    if [s for s, _ in starts] != sorted(s for s, _ in starts):
        return "the three parts are out of order (they must be Firstly, then Secondly, then Finally)"
    for (word, _), (_, end), (nxt, _) in zip(_PARTS[:2], starts[:2], starts[1:], strict=True):
        if len(re.findall(r"\w+", cot[end:nxt])) < _MIN_PART_WORDS:
            return f"the \"{word.capitalize()}\" sentence is too short"
    if NORMAL not in subset.labels:  # a negative's CoT ends in "normal", a diagnosis of every subset
        subset = replace(subset, labels=(*subset.labels, NORMAL))
    if not diagnosis_correct(cot, diagnosis, subset, fmt="cot"):
        stated = extract_labels(cot, subset, fmt="cot")
        said = join_labels(stated, "and") if stated else "no diagnosis"
        return (f"the final sentence states {said} but the diagnosis is {join_labels(diagnosis, 'and')}; "
                f"end with \"Finally, the diagnosis is {join_labels(diagnosis, 'and')}.\"")
    return None


_VERDICT_PREFIX = re.compile(r"^(?:verdict|decision|answer|result)\s*[:\-]\s*", re.IGNORECASE)
_VERDICT = re.compile(r"^(ACCEPT|REJECT)(?:ED|S)?\b[\s*_`\"'.:;,)\]\-–—]*(.*)$", re.IGNORECASE)
_REASON_PREFIX = re.compile(r"^(?:reason|because)\s*[:\-]?\s*", re.IGNORECASE)


def parse_verdict(reply: str) -> tuple[bool, str]:
    """The critic's reply -> ``(accepted, reason)``. The verdict is the first word of the first non-blank line
    (markdown and a "Verdict:" prefix tolerated); anything else is a REJECT with reason "unparseable verdict"."""
    lines = [ln.strip() for ln in (reply or "").strip().splitlines() if ln.strip()]
    if not lines:
        return False, "unparseable verdict (empty reply)"
    first = re.sub(r"^[\s*_#>`\"'\-\[(]+", "", lines[0])
    first = _VERDICT_PREFIX.sub("", first).lstrip("*_`\"' ")
    m = _VERDICT.match(first)
    if m is None:
        return False, f"unparseable verdict: {lines[0][:120]!r}"
    reason = m.group(2).strip().rstrip("*_` ").strip() or " ".join(lines[1:]).strip()
    reason = _REASON_PREFIX.sub("", reason).strip()
    accepted = m.group(1).upper() == "ACCEPT"
    return accepted, reason or ("" if accepted else "no reason given")
