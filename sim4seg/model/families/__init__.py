"""LVLM families (``model.lvlm.family``): what differs between LLaVA and Qwen2.5-VL, behind one small interface.

A family (:class:`~sim4seg.model.families.base.LVLMFamily`) knows how to build its transformers model (random-init
from the preset's sizes, or from a local directory that is checked against the family before anything is
loaded), its tokenizer, its image placeholder, and how it sees an image (an ``ImageView``: its processor's pixel
inputs, how many image tokens an image becomes and the grid they form). Everything else (the Sim4Seg module,
training, evaluation, test-time scaling, predict, export) is the same code for every family.

Both families name the parts LISA trains alike: the output head ``lm_head`` and the input embeddings
``model.language_model.embed_tokens`` (``model.trainable``'s ``lm_head`` and ``embed_tokens``), and the language
model ``model.language_model``, the only place LoRA may go (:func:`~.base.check_lora_target`).

========== ======================================== =================== ==========================================
family     transformers class                       model.clip_view     image tokens
========== ======================================== =================== ==========================================
llava      ``LlavaForConditionalGeneration``        center_crop | pad   (s / p)^2 of the CLIP tower, square grid
qwen2_5_vl ``Qwen2_5_VLForConditionalGeneration``   resize              (H'/28) x (W'/28), H' x W' the image resized
                                                                        to multiples of 28 (no crop)
========== ======================================== =================== ==========================================
"""

from __future__ import annotations

from omegaconf import DictConfig

from sim4seg.errors import UserError
from sim4seg.model.families.base import ImageInputs, ImageView, LVLMFamily, checkpoint_type
from sim4seg.model.families.llava import LLaVA
from sim4seg.model.families.qwen2_5_vl import Qwen2_5_VL

FAMILIES: dict[str, LVLMFamily] = {f.name: f for f in (LLaVA(), Qwen2_5_VL())}

__all__ = ["FAMILIES", "ImageInputs", "ImageView", "LVLMFamily", "check", "family_of"]


def family_of(cfg: DictConfig) -> LVLMFamily:
    """The family of a ``model`` config. Runs saved before families existed have no ``lvlm.family``: LLaVA."""
    name = cfg.lvlm.get("family", "llava")
    if name not in FAMILIES:
        raise UserError(f"model.lvlm.family={name!r}: use one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def check(cfg: DictConfig) -> LVLMFamily:
    """The family of ``cfg``, after refusing in one line what it cannot take: a view or prompt format it does not
    have, a missing local directory, or one holding another family's or an unsupported architecture."""
    family = family_of(cfg)
    if cfg.clip_view not in family.views:
        raise UserError(f"model.clip_view={cfg.clip_view!r}: the {family.name} family sees an image as "
                        f"{' or '.join(family.views)}")
    if cfg.prompt_format not in family.prompt_formats:
        raise UserError(f"model.prompt_format={cfg.prompt_format!r}: the {family.name} family's prompts use "
                        f"{' or '.join(family.prompt_formats)}")
    if cfg.lvlm.kind == "pretrained":
        model_type, arch = checkpoint_type(cfg.lvlm.path, family)
        if model_type != family.model_type:
            other = next((f for f in FAMILIES.values() if f.model_type == model_type), None)
            found = f"model_type {model_type!r}" + (f" ({arch})" if arch else "")
            fix = (f"use model.lvlm.family={other.name} (e.g. model={other.preset})" if other else "supported: "
                   + "; ".join(f"{f.name} = {f.architecture} (model_type {f.model_type})" for f in FAMILIES.values()))
            raise UserError(f"model.lvlm.path={cfg.lvlm.path}: holds a model of {found}, but model.lvlm.family="
                            f"{family.name} takes {family.architecture} (model_type {family.model_type}); {fix}")
    elif cfg.lvlm.kind != "random":
        raise UserError(f"model.lvlm.kind={cfg.lvlm.kind!r}: use 'random' or 'pretrained'")
    return family
