"""What turns (image, query, answer, mask) into model inputs: the LVLM's view, SAM's frame, and token ids.

SAM's frame follows the decoder family (frames.py): segment_anything's letterbox (resize the longest side to S,
normalise, pad bottom/right to S x S) or SAM2's stretch. The LVLM's view is its family's (families/): CLIP's
centre crop or padded square (LLaVA), or the whole image resized to multiples of 28 (Qwen2.5-VL), with as many
image tokens as that view gives. RVLS2M's geometry (rvls2m.to_mask_prompt) relies on exactly these mappings.
Token ids and labels come from the model's prompt format (prompt_formats.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from transformers import PreTrainedTokenizerBase

from sim4seg.errors import UserError
from sim4seg.model.families.base import ImageInputs, ImageView
from sim4seg.model.frames import stretch_image
from sim4seg.model.prompt_formats import IGNORE, PROMPT_FORMATS, encode
from sim4seg.model.tokens import IMAGE_TOKEN, SEG_TOKEN


@dataclass
class Processor:
    tokenizer: PreTrainedTokenizerBase
    view: ImageView  # the LVLM family's view of an image: pixel inputs, image-token count and grid (families/)
    sam_size: int
    sam_mean: list[float]
    sam_std: list[float]
    max_length: int  # model.max_length
    prompt_format: str = "chat_template"  # model.prompt_format: lisa_v1 | chat_template (prompt_formats.py)
    image_token: str = IMAGE_TOKEN  # the family's image placeholder
    image_start: str | None = None  # tokens around the image tokens, e.g. LISA's <im_start> ... <im_end>
    image_end: str | None = None
    sam_frame: str = "letterbox"  # the decoder family's frame (frames.py): letterbox (SAM) | stretch (SAM2)

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise UserError(f"model.prompt_format={self.prompt_format!r}: use one of {', '.join(PROMPT_FORMATS)}")
        if self.tokenizer is None:
            return
        if self.prompt_format == "chat_template" and not self.tokenizer.chat_template:
            raise UserError("model.prompt_format=chat_template but the tokenizer has no chat template; use "
                            "model.prompt_format=lisa_v1 (LISA's prompt) or a tokenizer with a chat template")
        ids, _ = self._tokens("?", None, 1)
        if ids.count(self.image_id) != 1:
            raise UserError(f"model.prompt_format={self.prompt_format}: the prompt holds {ids.count(self.image_id)} "
                            f"{self.image_token} image placeholders, not 1; use the chat template the model was "
                            "trained with")

    @property
    def image_processor(self):
        """The family's image processor (saved by export with the tokenizer)."""
        return self.view.image_processor

    @property
    def n_image_tokens(self) -> int | None:
        """Image tokens of every image, or None when they follow the image size (Qwen2.5-VL)."""
        return self.view.fixed_tokens

    @property
    def image_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def vision(self, image: np.ndarray) -> ImageInputs:
        """RGB uint8 [H, W, 3] -> the LVLM's inputs for it (its family's view)"""
        return self.view(image)

    def sam(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """RGB uint8 [H, W, 3] -> normalised, padded [3, S, S] and the resized (h, w) inside it"""
        if self.sam_frame == "stretch":
            return stretch_image(image, self.sam_size, self.sam_mean, self.sam_std)
        resized = ResizeLongestSide(self.sam_size).apply_image(image)
        h, w = resized.shape[:2]
        x = torch.from_numpy(resized).permute(2, 0, 1).float()
        x = (x - torch.tensor(self.sam_mean)[:, None, None]) / torch.tensor(self.sam_std)[:, None, None]
        return F.pad(x, (0, self.sam_size - w, 0, self.sam_size - h)), (h, w)

    def tokens(self, query: str, answer: str | None = None,
               image_hw: tuple[int, int] | None = None) -> tuple[list[int], list[int]]:
        """Token ids of the conversation in the model's prompt format, the image placeholder expanded to one id per
        image token of an ``image_hw`` image (None: the most an image gets, for families whose count follows the
        size), and labels that train on the answer (and its end) only. Without an answer: the generation prompt."""
        return self._tokens(query, answer, self.view.n_tokens(image_hw))

    def _tokens(self, query: str, answer: str | None, n_image: int) -> tuple[list[int], list[int]]:
        tok, image_id = self.tokenizer, self.image_id
        image = f"{self.image_start or ''}{self.image_token}{self.image_end or ''}"
        short, labels_short = encode(self.prompt_format, tok, query, answer, image, self.image_token)
        ids, labels = [], []
        for i, label in zip(short, labels_short):
            n = n_image if i == image_id else 1
            ids += [i] * n
            labels += [IGNORE if i == image_id else label] * n
        if len(ids) > self.max_length:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.max_length} (model.max_length); "
                             "shorten the query/answer")
        return ids, labels

    def sample(self, image: np.ndarray, query: str, answer: str | None = None, mask: np.ndarray | None = None,
               sample_id: str = "") -> dict:
        """One model input. ``mask`` must match the image size: bool [H, W] (every [SEG] of the answer gets it), or
        [t, H, W] (several targets: one per [SEG], in answer order)."""
        h, w = image.shape[:2]
        if mask is not None and mask.shape[-2:] != (h, w):
            raise ValueError(f"sample {sample_id!r}: mask is {mask.shape[-2]}x{mask.shape[-1]} but the image is {h}x{w}")
        view = self.vision(image)
        try:
            ids, labels = self._tokens(query, answer, view.n_tokens)
        except ValueError as e:
            raise ValueError(f"sample {sample_id!r}: {e}") from None
        sam_image, resize_hw = self.sam(image)
        out = {"id": sample_id, "input_ids": ids, "labels": labels, "pixel_values": view.pixel_values,
               "image_grid_thw": view.grid_thw, "token_grid": view.token_grid, "sam_images": sam_image,
               "resize_hw": resize_hw, "orig_hw": (h, w)}
        if mask is not None:
            # One target per [SEG] of the answer; a prompt without answer keeps the mask(s) as given, for scoring.
            n = ids.count(self.tokenizer.convert_tokens_to_ids(SEG_TOKEN)) if answer is not None else 1
            if mask.ndim == 3:
                if answer is not None and n != mask.shape[0]:
                    raise ValueError(f"sample {sample_id!r}: {mask.shape[0]} target masks but {n} [SEG] in its answer")
                out["masks"] = torch.from_numpy(mask).float()
            else:
                out["masks"] = torch.from_numpy(mask).float()[None].expand(n, h, w)
        return out

    def collate(self, samples: list[dict], left_pad: bool = False) -> dict:
        """Pad token ids (left for generation prompts) and stack images; masks stay a list (sizes differ).

        Qwen2.5-VL's patches are concatenated ([sum N_b, 1176]) with ``image_grid_thw`` [B, 3] saying whose they
        are; ``token_grid`` lists each sample's image-token grid (None for a CLIP tower's square grid)."""
        if not samples:
            raise ValueError("empty batch: no sample with an image")
        pad = self.tokenizer.pad_token_id
        length = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), length), pad, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE, dtype=torch.long)
        attn = torch.zeros((len(samples), length), dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            sl = slice(length - n, length) if left_pad else slice(0, n)
            ids[i, sl] = torch.tensor(s["input_ids"])
            labels[i, sl] = torch.tensor(s["labels"])
            attn[i, sl] = 1
        flat = samples[0]["image_grid_thw"] is not None
        pixels = [s["pixel_values"] for s in samples]
        batch = {"ids": [s["id"] for s in samples], "input_ids": ids, "labels": labels, "attention_mask": attn,
                 "pixel_values": torch.cat(pixels) if flat else torch.stack(pixels),
                 "token_grid": [s["token_grid"] for s in samples],
                 "resize_hw": [s["resize_hw"] for s in samples], "orig_hw": [s["orig_hw"] for s in samples]}
        if flat:
            batch["image_grid_thw"] = torch.stack([s["image_grid_thw"] for s in samples])
        if all("sam_embeddings" in s for s in samples):
            batch["sam_embeddings"] = torch.stack([s["sam_embeddings"] for s in samples])
        else:
            batch["sam_images"] = torch.stack([s["sam_images"] for s in samples])
        if all("masks" in s for s in samples):
            batch["masks"] = [s["masks"] for s in samples]
        return batch


def repeat_rows(batch: dict, m: int) -> dict:
    """Every sample of a collated batch ``m`` times in a row (rows b*m .. b*m+m-1 are sample b, the order of
    transformers' ``num_return_sequences``): tensors along dim 0, lists item by item, and Qwen2.5-VL's
    concatenated patches image by image."""
    out = {}
    for key, value in batch.items():
        if key == "pixel_values" and "image_grid_thw" in batch:
            per_image = value.split(batch["image_grid_thw"].prod(-1).tolist())
            out[key] = torch.cat([p for p in per_image for _ in range(m)])
        elif isinstance(value, torch.Tensor):
            out[key] = value.repeat_interleave(m, 0)
        elif isinstance(value, list):
            out[key] = [x for x in value for _ in range(m)]
        else:
            out[key] = value
    return out
