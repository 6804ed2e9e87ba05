"""Checks of what a person gives to inference (question, test-time scaling), importable without torch, so that
``predict`` refuses bad input before anything heavy is imported or loaded. Each failure is one UserError line."""

from __future__ import annotations

from sim4seg.errors import UserError

DEPLOYABLE = ("consensus", "sam_score")  # mask selections that need no ground truth (the paper's oracle does)
MAX_TTS = 16


def validate_query(query: str | None) -> str:
    """The question, stripped; an empty one is refused."""
    if not query or not query.strip():
        raise UserError("the question is empty: ask what to find, e.g. 'Where is the lesion? What is the diagnosis?'")
    return query.strip()


def validate_tts(m: int, n: int, select: str) -> None:
    """m answer paths, n region-mask perturbations per path, and a deployable mask selection."""
    if select not in DEPLOYABLE:
        raise UserError(f"mask selection {select!r}: use one of {', '.join(DEPLOYABLE)} (the oracle needs the "
                        "ground truth)")
    if not (1 <= m <= MAX_TTS and 1 <= n <= MAX_TTS):
        raise UserError(f"m={m}, n={n}: test-time scaling takes 1..{MAX_TTS} paths and 1..{MAX_TTS} masks per path")
