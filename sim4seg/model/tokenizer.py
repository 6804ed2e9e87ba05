"""The offline tokenizer of the tiny and demo presets: a byte-level BPE trained deterministically on the
project's own prompt text, so no file has to be downloaded or committed."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sim4seg.data.prompts import _ASK, _ASK_SINGLE, _LOCATE, IMAGE_TOKEN, SEG_ANSWERS, SEG_TOKEN, SYSTEM
from sim4seg.data.vocab import M3DS_SUBSETS, MODALITIES

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

_COT_WORDS = (
    "Firstly, the modality of this image is. Secondly, the image analysis shows a region with irregular margins, "
    "smooth borders, high intensity, low intensity, a bright line, a dark oval, a round blob, a star-shaped "
    "lesion, speckled texture, homogeneous echo, posterior shadowing. Finally, the diagnosis is "
)


def _corpus() -> list[str]:
    text = [SYSTEM, _COT_WORDS, *SEG_ANSWERS, *_LOCATE, *_ASK, *_ASK_SINGLE, *MODALITIES, "USER: ASSISTANT:"]
    for s in M3DS_SUBSETS.values():
        text += [*s.labels, *s.synonyms, s.finding, s.organ, s.name]
    text += [f"{w} {w.capitalize()} {w.upper()}" for w in " ".join(text).split()]
    text += [chr(c) for c in range(32, 127)]
    return text


def build_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the BPE (deterministic for a given corpus) and add ``<image>`` and ``[SEG]`` as special tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, SEG_TOKEN]})
    return fast
