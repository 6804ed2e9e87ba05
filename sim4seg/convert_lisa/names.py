"""One rename table from LISA's weight names to Sim4Seg's, and what derives from it: the forward rename (while
streaming the release), the backward rename (which LISA names a model of this config needs) and so the strict
check (every key of the release is one of those, and every one of those is there). As transformers'
``convert_llava_weights_to_hf.py`` does with its ``KEYS_TO_MODIFY_MAPPING``.

LISA-7B-v1 / LISA-13B-llama2-v1 (and Sim4Seg releases in LISA's format) name their weights

    model.embed_tokens.weight, model.layers.*, model.norm.weight, lm_head.weight      LLaMA
    model.mm_projector.{weight,bias}                                                  one Linear, CLIP -> H
    model.text_hidden_fcs.0.{0,2}.{weight,bias}                                        phi: Linear, ReLU, Linear
    model.visual_model.{image_encoder,prompt_encoder,mask_decoder}.*                  SAM
"""

from __future__ import annotations

import re

# (LISA name prefix, part of the Sim4Seg model, name prefix there). ``lvlm`` names are transformers'
# LlavaForConditionalGeneration parameters; ``phi`` the Sequential(Linear, ReLU, Linear) ``text_hidden_fcs``;
# ``sam`` segment_anything's Sam. LISA's single-Linear projector is linear_1 of transformers' projector
# (linear_2 is set to the identity: the release has nothing for it, nor for the CLIP tower).
RENAMES: tuple[tuple[str, str, str], ...] = (
    ("model.embed_tokens.", "lvlm", "model.language_model.embed_tokens."),
    ("model.layers.", "lvlm", "model.language_model.layers."),
    ("model.norm.", "lvlm", "model.language_model.norm."),
    ("lm_head.", "lvlm", "lm_head."),
    ("model.mm_projector.", "lvlm", "model.multi_modal_projector.linear_1."),
    ("model.text_hidden_fcs.0.", "phi", ""),
    ("model.visual_model.", "sam", ""),
)
PARTS = ("lvlm", "phi", "sam")
# Derived buffers that old transformers versions saved with LLaMA; recomputed by the model, so skipped.
SKIPPED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def to_sim4seg(key: str) -> tuple[str, str] | None:
    """LISA's name -> (part, name in that part); None for a name outside LISA's layout."""
    for lisa, part, ours in RENAMES:
        if key.startswith(lisa):
            return part, ours + key[len(lisa):]
    return None


def to_lisa(part: str, name: str) -> str | None:
    """(part, name) -> LISA's name; None for what a LISA release does not hold (CLIP tower, projector linear_2)."""
    for lisa, p, ours in RENAMES:
        if p == part and name.startswith(ours):
            return lisa + name[len(ours):]
    return None


def lisa_names(expected: dict[str, set[str]]) -> set[str]:
    """The LISA names a release must hold for a model whose parts have the parameter names ``expected``."""
    return {k for part, names in expected.items() for n in names if (k := to_lisa(part, n)) is not None}
