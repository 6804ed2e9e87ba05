"""The one answer decoder: generated token ids -> the answer text, without EOS or padding."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


def decode_answer(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[int]) -> str:
    """Text of ``tokens`` with special tokens kept (``[SEG]`` is one), EOS and padding dropped, ends stripped."""
    drop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    return tokenizer.decode([t for t in tokens if t not in drop], skip_special_tokens=False).strip()
