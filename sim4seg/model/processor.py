"""What turns (image, query, answer, mask) into model inputs: the CLIP view, SAM's frame, and token ids.

SAM's frame follows segment_anything: resize the longest side to S, normalise, pad bottom/right to S x S.
The CLIP view is CLIP's processor (resize shortest side + center crop) or, with ``clip_view=pad``, the image
centred on a square of the mean colour first (LLaVA-1.5). RVLS2M's geometry (rvls2m.to_mask_prompt) relies on
exactly these two mappings. Token ids and labels come from the model's prompt format (prompt_formats.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from transformers import CLIPImageProcessor, PreTrainedTokenizerBase

from sim4seg.errors import UserError
from sim4seg.model.frames import stretch_image
from sim4seg.model.prompt_formats import IGNORE, PROMPT_FORMATS, encode
from sim4seg.model.tokens import IMAGE_TOKEN, SEG_TOKEN


@dataclass
class Processor:
    tokenizer: PreTrainedTokenizerBase
    image_processor: CLIPImageProcessor
    n_image_tokens: int
    sam_size: int
    sam_mean: list[float]
    sam_std: list[float]
    clip_view: str = "center_crop"
    max_length: int = 2048
    prompt_format: str = "chat_template"  # model.prompt_format: lisa_v1 | chat_template (prompt_formats.py)
    image_start: str | None = None  # tokens around the image tokens, e.g. LISA's <im_start> ... <im_end>
    image_end: str | None = None
    sam_frame: str = "letterbox"  # the decoder family's frame (frames.py): letterbox (SAM) | stretch (SAM2)

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise UserError(f"model.prompt_format={self.prompt_format!r}: use one of {', '.join(PROMPT_FORMATS)}")
        if self.prompt_format == "chat_template" and self.tokenizer is not None and not self.tokenizer.chat_template:
            raise UserError("model.prompt_format=chat_template but the tokenizer has no chat template; use "
                            "model.prompt_format=lisa_v1 (LISA's prompt) or a tokenizer with a chat template")

    def clip(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 [H, W, 3] -> CLIP pixel values [3, s, s]"""
        if self.clip_view == "pad":
            h, w = image.shape[:2]
            side = max(h, w)
            fill = np.array(self.image_processor.image_mean) * 255
            sq = np.empty((side, side, 3), dtype=np.uint8)
            sq[:] = fill.round().astype(np.uint8)
            top, left = (side - h) // 2, (side - w) // 2
            sq[top:top + h, left:left + w] = image
            image = sq
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def sam(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """RGB uint8 [H, W, 3] -> normalised, padded [3, S, S] and the resized (h, w) inside it"""
        if self.sam_frame == "stretch":
            return stretch_image(image, self.sam_size, self.sam_mean, self.sam_std)
        resized = ResizeLongestSide(self.sam_size).apply_image(image)
        h, w = resized.shape[:2]
        x = torch.from_numpy(resized).permute(2, 0, 1).float()
        x = (x - torch.tensor(self.sam_mean)[:, None, None]) / torch.tensor(self.sam_std)[:, None, None]
        return F.pad(x, (0, self.sam_size - w, 0, self.sam_size - h)), (h, w)

    def tokens(self, query: str, answer: str | None = None) -> tuple[list[int], list[int]]:
        """Token ids of the conversation in the model's prompt format, ``<image>`` expanded to one id per image
        token, and labels that train on the answer (and its end) only. Without an answer: the generation prompt."""
        tok = self.tokenizer
        image = f"{self.image_start or ''}{IMAGE_TOKEN}{self.image_end or ''}"
        short, labels_short = encode(self.prompt_format, tok, query, answer, image)
        image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        ids, labels = [], []
        for i, label in zip(short, labels_short):
            n = self.n_image_tokens if i == image_id else 1
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
        try:
            ids, labels = self.tokens(query, answer)
        except ValueError as e:
            raise ValueError(f"sample {sample_id!r}: {e}") from None
        sam_image, resize_hw = self.sam(image)
        out = {"id": sample_id, "input_ids": ids, "labels": labels, "pixel_values": self.clip(image),
               "sam_images": sam_image, "resize_hw": resize_hw, "orig_hw": (h, w)}
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
        """Pad token ids (left for generation prompts) and stack images; masks stay a list (sizes differ)."""
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
        batch = {"ids": [s["id"] for s in samples], "input_ids": ids, "labels": labels, "attention_mask": attn,
                 "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
                 "resize_hw": [s["resize_hw"] for s in samples], "orig_hw": [s["orig_hw"] for s in samples]}
        if all("sam_embeddings" in s for s in samples):
            batch["sam_embeddings"] = torch.stack([s["sam_embeddings"] for s in samples])
        else:
            batch["sam_images"] = torch.stack([s["sam_images"] for s in samples])
        if all("masks" in s for s in samples):
            batch["masks"] = [s["masks"] for s in samples]
        return batch
