"""Prompt formats (``model.prompt_format``): how a query and an answer become token ids and labels.

``lisa_v1``
    What LISA trained with, token for token (dvlab-research/LISA: model/llava/conversation.py ``llava_v1``,
    model/llava/mm_utils.py ``tokenizer_image_token``, utils/dataset.py ``collate_fn``). The text is
    ``SYSTEM + " USER: <image>\\n{query} ASSISTANT: {answer}</s>"`` (generation: ending in ``ASSISTANT:``), tokenised
    as transformers 4.31's slow ``LlamaTokenizer`` does it: the text is cut at ``<image>`` and at the added tokens
    (``[SEG]``, ``<im_start>``, ...), whitespace on both sides of an added token is dropped, and every remaining
    piece is encoded on its own, so each gets sentencepiece's dummy prefix. Labels: LISA masks BOS and the
    instruction measured as its own tokenisation of ``"... ASSISTANT: "`` minus 2, and trains on the rest
    (answer and ``</s>``). ``scripts/lisa_golden_ids.py`` checks all of it against transformers 4.31.
``chat_template``
    The tokenizer's own chat template (``tokenizer.apply_chat_template``): a user turn with the image and the
    query, the generation prompt, and the assistant turn as the template writes it. Labels: the assistant turn
    (plus EOS when the template ends it otherwise). For models that are not LISA.

Both give one image placeholder id where the image goes (the family's: LLaVA's ``<image>``, Qwen2.5-VL's
``<|image_pad|>``, which its template writes between ``<|vision_start|>`` and ``<|vision_end|>``); the Processor
repeats it once per image token.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

from sim4seg.model.tokens import IMAGE_TOKEN

IGNORE = -100  # label of a position that is not trained on
PROMPT_FORMATS = ("lisa_v1", "chat_template")

# llava_v1's system prompt, roles and separators (sep " ", sep2 "</s>").
LISA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_LISA_ANSWER_SEP = " ASSISTANT: "


def lisa_v1_text(query: str, answer: str | None = None) -> str:
    """LISA's conversation text; without an answer, the generation prompt (ending in ``ASSISTANT:``)."""
    prompt = f"{LISA_SYSTEM} USER: {IMAGE_TOKEN}\n{query}"
    return f"{prompt}{_LISA_ANSWER_SEP}{answer}</s>" if answer is not None else f"{prompt} ASSISTANT:"


def encode(prompt_format: str, tok: PreTrainedTokenizerBase, query: str, answer: str | None,
           image: str = IMAGE_TOKEN, image_token: str = IMAGE_TOKEN) -> tuple[list[int], list[int]]:
    """(ids, labels) of one sample; ``image_token`` is the family's placeholder and ``image`` the text that stands
    for the image (the placeholder, or wrapped, e.g. LISA's ``<im_start><image><im_end>``). Without an answer: the
    generation prompt, every label ``IGNORE``."""
    if prompt_format == "lisa_v1":
        return _lisa_v1(tok, query, answer, image, image_token)
    if prompt_format == "chat_template":
        return _chat_template(tok, query, answer, image, image_token)
    raise ValueError(f"model.prompt_format={prompt_format!r}: use one of {', '.join(PROMPT_FORMATS)}")


# ---- lisa_v1 -------------------------------------------------------------------------------------------------
def _lisa_v1(tok: PreTrainedTokenizerBase, query: str, answer: str | None, image: str,
             image_token: str) -> tuple[list[int], list[int]]:
    text = lisa_v1_text(query, answer).replace(IMAGE_TOKEN, image)
    ids = _lisa_ids(tok, text, image_token)
    if answer is None:
        return ids, [IGNORE] * len(ids)
    # collate_fn: target[0] and target[1 : 1 + len(ids(instruction)) - 2] are ignored, the rest of the round kept.
    instruction = text.partition(_LISA_ANSWER_SEP)[0] + _LISA_ANSWER_SEP
    masked = min(len(_lisa_ids(tok, instruction, image_token)) - 1, len(ids))
    return ids, [IGNORE] * masked + ids[masked:]


def _lisa_ids(tok: PreTrainedTokenizerBase, text: str, image_token: str) -> list[int]:
    """tokenizer_image_token: BOS, then the pieces between image placeholders, the image id between them."""
    image_id = tok.convert_tokens_to_ids(image_token)
    ids = [tok.bos_token_id] if tok.bos_token_id is not None else []
    for i, chunk in enumerate(text.split(image_token)):
        ids += ([image_id] if i else []) + _slow_llama_ids(tok, chunk)
    return ids


def _slow_llama_ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    """transformers 4.31's slow LlamaTokenizer (legacy mode) on ``text``, without BOS: cut at the added tokens;
    those other than BOS/EOS/UNK (AddedTokens that keep their whitespace) drop the whitespace beside them; each
    remaining piece is encoded alone (its own dummy prefix)."""
    keep = {t for t in (tok.bos_token, tok.eos_token, tok.unk_token) if t}
    added = sorted(set(tok.get_added_vocab()) | keep, key=len, reverse=True)
    # Odd positions hold the added tokens (longest first, as the tokenizer's trie matches them).
    parts = re.split("(" + "|".join(map(re.escape, added)) + ")", text) if added else [text]
    for i in range(1, len(parts), 2):
        if parts[i] not in keep:
            parts[i - 1], parts[i + 1] = parts[i - 1].rstrip(), parts[i + 1].lstrip()
    ids: list[int] = []
    for i, part in enumerate(parts):
        if i % 2:
            ids.append(tok.convert_tokens_to_ids(part))
        elif part:
            ids += tok(part, add_special_tokens=False)["input_ids"]
    return ids


# ---- chat_template -------------------------------------------------------------------------------------------
def _chat_template(tok: PreTrainedTokenizerBase, query: str, answer: str | None, image: str,
                   image_token: str) -> tuple[list[int], list[int]]:
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}]
    prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    ids = _ids(tok, prompt, image, image_token)
    if answer is None:
        return ids, [IGNORE] * len(ids)
    chat = user + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    full = tok.apply_chat_template(chat, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the tokenizer's chat template does not start a conversation with its generation prompt; "
                         "use model.prompt_format=lisa_v1")
    turn = _ids(tok, full[len(prompt):], image, image_token)
    if tok.eos_token_id not in turn:  # the model must learn to stop
        turn.append(tok.eos_token_id)
    return ids + turn, [IGNORE] * len(ids) + turn


def _ids(tok: PreTrainedTokenizerBase, text: str, image: str, image_token: str) -> list[int]:
    return tok(text.replace(image_token, image), add_special_tokens=False)["input_ids"]
