"""``hf:DIR``: a local transformers model of the LLaVA or the Qwen2.5-VL family (e.g. HuatuoGPT-Vision-7B-
Qwen2.5VL), loaded through ``AutoModelForImageTextToText`` / ``AutoProcessor`` with ``local_files_only=True``:
nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim4seg.data.cot.chat import MAX_IMAGE_SIDE, ChatRequest, fit_side, one_line
from sim4seg.errors import UserError
from sim4seg.model.prompt_formats import lisa_v1_text

if TYPE_CHECKING:
    import torch

# config.json "model_type" -> what it is; both expand one image placeholder of the prompt into the image tokens
FAMILIES = {"llava": "LLaVA (LlavaForConditionalGeneration)",
            "qwen2_5_vl": "Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration)"}


def model_family(path: Path) -> str:
    """The ``model_type`` of ``path/config.json`` when it is one of :data:`FAMILIES`, else a one-line UserError
    naming what was found and what is supported (read before anything heavy is loaded)."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise UserError(f"hf backend: {path} is not a local transformers model folder (no config.json); "
                        "nothing is downloaded")
    try:
        d = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"hf backend: {cfg} is not readable JSON: {one_line(str(e))}") from None
    kind = d.get("model_type") if isinstance(d, dict) else None
    if kind not in FAMILIES:
        arch = ", ".join(map(str, d.get("architectures") or [])) if isinstance(d, dict) else ""
        supported = "; ".join(f"{k} = {v}" for k, v in FAMILIES.items())
        raise UserError(f"hf backend: {path} holds a model of type {kind!r}" + (f" ({arch})" if arch else "")
                        + f", which is not supported; supported model_type values: {supported}")
    return kind


class HFBackend:
    """A local LLaVA- or Qwen2.5-VL-format model and its processor. Batched generation with left padding,
    greedy unless ``temperature > 0``.

    The prompt is the folder's chat template (the processor's, else the tokenizer's) with one image and the text.
    A LLaVA folder without a template (LISA's releases) gets LISA's LLaVA-v1 conversation, and a LLaVA processor
    saved without ``patch_size`` (only tokenizer + image processor in the folder) is completed from the model
    config; a Qwen2.5-VL folder must ship its template, as the official releases do.
    """

    def __init__(self, path: str | Path, max_new_tokens: int = 256, temperature: float = 0.0,
                 device: str | None = None, trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        path = Path(path)
        self.family = model_family(path)
        if not device or device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32
        if device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"hf backend: cannot load the {FAMILIES[self.family]} model in {path}: "
                            f"{one_line(str(e))[:300]}"
                            + ("" if trust_remote_code else " (if it needs custom code, pass --trust-remote-code)")
                            ) from None
        self.model = model.to(device).eval()
        self.device = device
        self.processor = self._load_processor(path, trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.chat_template = self.processor.chat_template  # AutoProcessor takes the tokenizer's when it has none
        if not self.chat_template and self.family != "llava":
            raise UserError(f"hf backend: {path} has no chat template (chat_template.jinja, chat_template.json or "
                            f"tokenizer_config.json); a {FAMILIES[self.family]} model needs the one it was "
                            "trained with")

    def _load_processor(self, path: Path, trust_remote_code: bool) -> Any:
        from transformers import AutoProcessor

        try:
            proc = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError) as e:
            proc, why = None, one_line(str(e))[:300]
        else:
            why = f"AutoProcessor gave a {type(proc).__name__}, not a tokenizer with an image processor"
        if proc is None or not hasattr(proc, "image_processor") or not hasattr(proc, "tokenizer"):
            raise UserError(f"hf backend: {path} lacks a usable processor (tokenizer + image processor files): "
                            f"{why}")
        cfg = self.model.config
        if self.family == "llava" and getattr(proc, "patch_size", 1) is None:
            vision = cfg.vision_config  # processor saved without the LLaVA fields: take the model's
            proc.patch_size = vision.patch_size
            proc.vision_feature_select_strategy = cfg.vision_feature_select_strategy
            proc.num_additional_image_tokens = 1 if "clip" in str(vision.model_type) else 0
        return proc

    def prompt(self, text: str) -> str:
        """The full prompt of one request, holding the processor's single image placeholder."""
        if self.chat_template:
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self.processor.apply_chat_template(conv, chat_template=self.chat_template,
                                                      add_generation_prompt=True, tokenize=False)
        return lisa_v1_text(text)

    def encode(self, batch: list[ChatRequest]) -> dict[str, Any]:
        """Processor inputs on the model's device: ``input_ids`` / ``attention_mask`` ``[B, L]`` (left padded,
        image placeholders expanded to one token per image feature), ``pixel_values`` in the model's dtype
        (LLaVA ``[B, 3, H, W]``; Qwen2.5-VL ``[patches, C*T*P*P]`` with ``image_grid_thw`` ``[B, 3]``)."""
        from PIL import Image

        missing = [r.record_id for r in batch if r.image is None]
        if missing:
            raise ValueError(f"hf backend: request(s) {missing} carry no image")
        images = [Image.fromarray(fit_side(r.image, MAX_IMAGE_SIDE)) for r in batch]
        texts = [self.prompt(r.text) for r in batch]
        bos = self.tokenizer.bos_token  # a template that writes BOS must not get a second one (as transformers)
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True,
                                add_special_tokens=not (bos and texts[0].startswith(bos)))
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def generate_ids(self, batch: list[ChatRequest]) -> torch.Tensor:
        """``[B, T]`` new token ids, ``T <= max_new_tokens``; rows that ended early are padded after their EOS."""
        import torch

        inputs = self.encode(batch)
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False)
        try:
            with torch.inference_mode():
                out = self.model.generate(**inputs, **kwargs)
        except ValueError as e:
            raise UserError(f"hf backend: generation failed: {one_line(str(e))[:300]} (does the processor expand "
                            "the image placeholder to the model's number of image features?)") from None
        return out[:, inputs["input_ids"].shape[1]:]

    def generate(self, batch: list[ChatRequest]) -> list[str]:
        if not batch:
            return []
        return [t.strip() for t in self.tokenizer.batch_decode(self.generate_ids(batch), skip_special_tokens=True)]
