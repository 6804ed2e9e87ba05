"""Low-memory loading of a pretrained LVLM (issue 14.5): ``model.quantization`` = null | nf4 | int8.

``nf4`` is QLoRA's base (Dettmers et al. 2023): the language model's linear layers stored as 4-bit NormalFloat with
double quantisation and computed in the model dtype (``model.dtype``, bf16 for the 7B presets), while LoRA and
everything trained in full (``lm_head``, ``embed_tokens``, phi, the SAM decoder) stay in that dtype. ``int8`` is
LLM.int8() for inference. Only the language model is quantised: the vision tower and projector (whose image states
RVLS2M reads) and ``lm_head`` stay as they are, and phi and SAM are not part of the LVLM, so the [SEG] path keeps
its precision (LISA #174 reported blank masks under 4-bit). Through bitsandbytes, which runs both on the CPU too.

:func:`load_kwargs` is what a family's ``from_pretrained`` call takes::

    model_class.from_pretrained(path, dtype=dtype, ..., **quantize.load_kwargs(cfg))
"""

from __future__ import annotations

import re

import torch
from omegaconf import DictConfig

from sim4seg.errors import UserError

QUANTIZATIONS = ("nf4", "int8")
# Modules bitsandbytes leaves alone (transformers matches these from the start of a module's name): the vision
# side of both families (LLaVA's tower and projector, Qwen2.5-VL's ``visual`` with its merger) and the output head.
KEEP = ["model.vision_tower", "model.multi_modal_projector", "model.visual", "lm_head"]


def load_kwargs(cfg: DictConfig, device: str | int | None = None) -> dict:
    """``from_pretrained`` keyword arguments for ``model.quantization`` (none without it), after refusing in one
    line what cannot work: another value, a random-init LVLM, a language model trained in full, no bitsandbytes.
    ``device``: where the quantised weights live (default: the current CUDA device, else the CPU)."""
    how = cfg.get("quantization")
    if how is None:
        return {}
    if how not in QUANTIZATIONS:
        raise UserError(f"model.quantization={how!r}: use null, {' or '.join(QUANTIZATIONS)}")
    if cfg.lvlm.kind != "pretrained":
        raise UserError(f"model.quantization={how} quantises a pretrained LVLM's weights; model.lvlm.kind="
                        f"{cfg.lvlm.kind!r} has none (use model.lvlm.kind=pretrained with model.lvlm.path)")
    full = [t for t in cfg.get("trainable", []) if re.search(t, "model.language_model.layers.0.mlp.down_proj")]
    if full:
        raise UserError(f"model.quantization={how}: model.trainable={full[0]!r} would train the quantised language "
                        "model in full; train it with LoRA (model.lora.enabled=true) and drop it from model.trainable")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise UserError(f"model.quantization={how} needs bitsandbytes: pip install 'bitsandbytes>=0.45'") from None
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.get("dtype", "float32")]
    if how == "nf4":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=KEEP)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=KEEP)
    if device is None:
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}
