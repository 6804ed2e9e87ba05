"""The Sim4Seg module (paper Fig. 2): the LVLM answers, phi projects the [SEG] state, RVLS2M turns the
similarity of image tokens and [SEG] into a region mask, and SAM decodes the mask (Eqs. 1-9).

The LVLM is any family of :mod:`sim4seg.model.families` (LLaVA, Qwen2.5-VL). Image tokens are expanded inside
``input_ids`` (both families' processors do it), so hidden-state positions equal token positions: the image states
are simply ``hidden[input_ids == image_token_id]``; no offset arithmetic. Their count and grid may differ per image
(Qwen2.5-VL's dynamic resolution): image states are a list, and RVLS2M gets each image's ``token_grid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from segment_anything.modeling import Sam
from torch import nn
from torch.func import functional_call
from transformers import PreTrainedModel

from sim4seg.model import frames, rvls2m
from sim4seg.model.losses import LossWeights, mask_losses, region_loss, total_loss
from sim4seg.model.processor import repeat_rows
from sim4seg.model.rvls2m import RVLS2MConfig

SEG_STATES = ("predicting", "token")


def text_hidden_fcs(hidden: int, prompt_dim: int) -> nn.Sequential:
    """phi, Eq. 2: LISA's projection of the [SEG] state into SAM's prompt space. [.., H] -> [.., P]"""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, prompt_dim))


@dataclass
class Decoded:
    """Masks for the [SEG] tokens of one image.

    logits: [s, H, W] at the original resolution (fp32); iou: SAM's predicted IoU [s]; embeds: phi([SEG]) [s, P];
    cells: region masks bool [s, g, g] (None when RVLS2M is off); scores: the cells' region scores [s, g, g] (log
    scores for softmax, see rvls2m.region_mask; or None); sim_std: the spread of Eq. 4's similarities per [SEG]
    [s] (or None): where it is large, the pooled softmax is what decides the cells.
    """

    logits: torch.Tensor
    iou: torch.Tensor
    embeds: torch.Tensor  # phi([SEG] states) [s, P], to decode more candidates (test-time scaling)
    cells: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    sim_std: torch.Tensor | None = None


@dataclass
class ForwardOutput:
    losses: dict[str, torch.Tensor]
    masks: list[Decoded] = field(default_factory=list)  # one per sample
    n_masks: int = 0


class Sim4Seg(nn.Module):
    def __init__(self, lvlm: PreTrainedModel, sam: Sam, seg_token_id: int, image_token_id: int,
                 rvls2m_cfg: RVLS2MConfig, seg_state: str = "predicting", clip_view: str = "center_crop",
                 loss_weights: LossWeights | None = None):
        super().__init__()
        if seg_state not in SEG_STATES:
            raise ValueError(f"model.seg_state={seg_state!r}: use one of {', '.join(SEG_STATES)}")
        self.lvlm = lvlm
        self.sam = sam
        hidden = lvlm.config.get_text_config().hidden_size
        self.text_hidden_fcs = text_hidden_fcs(hidden, sam.prompt_encoder.embed_dim)
        self.seg_token_id = seg_token_id
        self.image_token_id = image_token_id
        self.rvls2m = rvls2m_cfg
        self.seg_state = seg_state
        self.clip_view = clip_view
        self.loss_weights = loss_weights or LossWeights()

    def train(self, mode: bool = True) -> Sim4Seg:
        """Frozen parts stay in eval mode while training (LiteMedSAM's encoder has BatchNorm: batch statistics
        would change its output and its running statistics)."""
        super().train(mode)
        for frozen in (self.sam.image_encoder, self.sam.prompt_encoder):
            frozen.eval()
        return self

    # ---- SAM side -------------------------------------------------------------------------------------------
    @property
    def mask_prompt_size(self) -> int:
        return self.sam.prompt_encoder.mask_input_size[0]

    def encode_images(self, sam_images: torch.Tensor) -> torch.Tensor:
        """SAM image encoder (Eq. 3), without autograd unless it trains (SAM2's encoder LoRA). Images in the
        family's frame [B, 3, S, S] -> [B, P, E, E] (SAM2: its packed [B, 4P, E, E], see sim4seg.model.sam2)"""
        enc = self.sam.image_encoder
        trains = self.training and torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters())
        with torch.set_grad_enabled(trains):
            return enc(sam_images.to(self.sam.mask_decoder.iou_token.weight.dtype))

    def decode(self, image_embedding: torch.Tensor, seg_embeds: torch.Tensor, cells: torch.Tensor | None,
               resize_hw: tuple[int, int], orig_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM mask decoder for one image and its s prompts (Eq. 9).

        image_embedding: [P, E, E]; seg_embeds: [s, P]; cells: bool [s, g, g] or None (no dense prompt)
        -> mask logits [s, H, W] at the original size, predicted IoU [s]
        """
        s = seg_embeds.shape[0]
        if s == 0:  # no [SEG]: no mask, and nothing for the decoder to do
            z = seg_embeds.new_zeros((0, *orig_hw), dtype=torch.float32)
            return z, seg_embeds.new_zeros((0,))
        pe = self.sam.prompt_encoder
        with torch.no_grad():  # the prompt encoder is frozen and the region mask is not differentiable
            prompt = None
            if cells is not None:
                prompt = frames.mask_prompt(frames.frame_of(self.sam), cells, [orig_hw] * s, self.clip_view,
                                            self.mask_prompt_size, self.rvls2m.on, self.rvls2m.off)
            if prompt is not None:
                prompt = prompt.to(next(pe.parameters()).dtype)
            sparse, dense = pe(points=None, boxes=None, masks=prompt)
            dense = dense.expand(s, -1, -1, -1)
            image_pe = pe.get_dense_pe()
        sparse = torch.cat([sparse.expand(s, -1, -1).to(seg_embeds.dtype), seg_embeds[:, None]], dim=1)
        low_res, iou = self.sam.mask_decoder(image_embeddings=image_embedding[None].to(seg_embeds.dtype),
                                             image_pe=image_pe.to(seg_embeds.dtype),
                                             sparse_prompt_embeddings=sparse,
                                             dense_prompt_embeddings=dense.to(seg_embeds.dtype),
                                             multimask_output=False)
        # Upsample and threshold in fp32, as LISA does: bf16 interpolation moves the mask boundary.
        masks = self.sam.postprocess_masks(low_res.float(), tuple(resize_hw), tuple(orig_hw))
        return masks[:, 0], iou[:, 0]

    # ---- RVLS2M ------------------------------------------------------------------------------------------
    def use_rvls2m(self) -> bool:
        return self.rvls2m.enabled and not (self.rvls2m.at_inference_only and self.training)

    @torch.no_grad()
    def region_cells(self, image_states: torch.Tensor, seg_states: torch.Tensor,
                     token_grid: tuple[int, int] | None = None) -> rvls2m.Region:
        """Algorithm 1 for s [SEG] tokens of one image. image_states: [n, H]; seg_states: [s, H]; token_grid: the
        (rows, cols) of its n tokens (None: a square CLIP grid, Eq. 6) -> cells, scores [s, g, g] and similarities
        [s, n]. phi runs in fp32 here whatever the model dtype: in bf16 its rounding differs between a cached
        generation step and a teacher-forced pass enough to swap cells."""
        image_states, seg_states = image_states.float(), seg_states.float()
        if self.rvls2m.project:
            fp32 = {n: p.float() for n, p in self.text_hidden_fcs.named_parameters()}
            image_states = functional_call(self.text_hidden_fcs, fp32, image_states)
            seg_states = functional_call(self.text_hidden_fcs, fp32, seg_states)
        states = image_states[None].expand(seg_states.shape[0], -1, -1)
        return rvls2m.region_mask(states, seg_states, self.rvls2m, token_grid)

    def segment(self, image_embeddings: torch.Tensor, image_states: list[torch.Tensor], seg_states: torch.Tensor,
                seg_batch: torch.Tensor, resize_hw: Sequence, orig_hw: Sequence,
                token_grids: Sequence | None = None) -> list[Decoded]:
        """Masks for every [SEG]. image_embeddings: [B, P, E, E]; image_states: B tensors [n_b, H];
        seg_states: [S, H] with seg_batch [S] the image index of each; token_grids: B grids (or None) -> one
        Decoded per image."""
        seg_embeds = self.text_hidden_fcs(seg_states)
        rv = self.use_rvls2m() and seg_states.shape[0] > 0
        out = []
        for b in range(image_embeddings.shape[0]):  # SAM's decoder takes one image with its prompts per call
            sel = (seg_batch == b).nonzero(as_tuple=True)[0]
            c, extra = None, {}
            if rv:
                region = self.region_cells(image_states[b], seg_states[sel], token_grids[b] if token_grids else None)
                c = region.cells
                extra = {"scores": region.scores, "sim_std": region.similarity.std(dim=-1, correction=0).float()}
            logits, iou = self.decode(image_embeddings[b], seg_embeds[sel], c, resize_hw[b], orig_hw[b])
            out.append(Decoded(logits, iou, seg_embeds[sel], c, **extra))
        return out

    def region_log_cells(self, image_states: Sequence[torch.Tensor], seg_states: torch.Tensor,
                         seg_batch: torch.Tensor, token_grids: Sequence | None = None) -> list[torch.Tensor]:
        """For the region loss, with autograd: per image, the log of Eq. 7's cell means of Eq. 5's softmax over
        its image tokens, one map per [SEG] [s_b, g, g]. image_states: per image [n_b, H]; seg_states: [S, H] with
        seg_batch [S] the image index of each."""
        def phi(x: torch.Tensor) -> torch.Tensor:
            return (self.text_hidden_fcs(x) if self.rvls2m.project else x).float()

        seg = phi(seg_states)
        out = []
        for b in range(len(image_states)):
            sel = (seg_batch == b).nonzero(as_tuple=True)[0]
            sim = rvls2m.similarity(phi(image_states[b])[None].expand(len(sel), -1, -1), seg[sel])
            grid = {"token_grid": token_grids[b]} if token_grids else {}
            out.append(rvls2m.region_scores(rvls2m.normalize(sim, "softmax"), self.rvls2m.grid, log=True, **grid))
        return out

    # ---- LVLM side ---------------------------------------------------------------------------------------
    def image_states(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """States of the image tokens, per sample. hidden: [B, L, H] -> B tensors [n_b, H]"""
        is_img = input_ids == self.image_token_id
        return list(hidden[is_img].split(is_img.sum(1).tolist()))

    def vision_inputs(self, batch: dict, input_ids: torch.Tensor) -> dict:
        """The LVLM's image inputs: ``pixel_values``; for Qwen2.5-VL also ``image_grid_thw`` and the
        ``mm_token_type_ids`` (1 at image tokens of ``input_ids``) its mrope positions are computed from."""
        out = {"pixel_values": batch["pixel_values"]}
        if "image_grid_thw" in batch:
            out["image_grid_thw"] = batch["image_grid_thw"]
            out["mm_token_type_ids"] = (input_ids == self.image_token_id).int()
        return out

    def seg_positions(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sample index, position of the state that stands for each [SEG]) per ``seg_state``."""
        b, pos = (input_ids == self.seg_token_id).nonzero(as_tuple=True)
        return b, pos - 1 if self.seg_state == "predicting" else pos

    def forward(self, batch: dict) -> ForwardOutput:
        """Teacher-forced pass: LVLM loss, masks for every [SEG] of the input, and the mask losses.

        batch: pixel_values [B, 3, h, w] (Qwen2.5-VL: its patches [N, D] and image_grid_thw [B, 3]), input_ids /
        attention_mask / labels [B, L], and either sam_images [B, 3, S, S] or sam_embeddings [B, P, E, E];
        resize_hw, orig_hw: B pairs; token_grid: B grids or None; masks: B tensors [s_b, H, W].
        """
        ids = batch["input_ids"]
        out = self.lvlm(input_ids=ids, attention_mask=batch["attention_mask"], labels=batch.get("labels"),
                        output_hidden_states=True, **self.vision_inputs(batch, ids))
        hidden = out.hidden_states[-1]
        seg_b, seg_pos = self.seg_positions(ids)
        emb = batch.get("sam_embeddings")
        if emb is None:
            emb = self.encode_images(batch["sam_images"])
        img_states, seg_states = self.image_states(hidden, ids), hidden[seg_b, seg_pos]
        decoded = self.segment(emb, img_states, seg_states, seg_b,
                               batch["resize_hw"], batch["orig_hw"], batch.get("token_grid"))
        gt = batch.get("masks")
        txt = out.loss if out.loss is not None else hidden.new_zeros(())
        if gt is None:
            zero = hidden.new_zeros(()).float()
            return ForwardOutput(total_loss(txt, zero, zero, self.loss_weights), decoded, 0)
        gt = [g.to(hidden.device) for g in gt]
        bce, dice, n = mask_losses([d.logits for d in decoded], gt)
        region = None
        if self.loss_weights.region and self.use_rvls2m():  # ours, off by default (losses.py)
            region = region_loss(self.region_log_cells(img_states, seg_states, seg_b, batch.get("token_grid")), gt,
                                 batch["orig_hw"], self.clip_view)
        return ForwardOutput(total_loss(txt, bce, dice, self.loss_weights, region), decoded, n)

    # ---- inference -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, num_return_sequences: int = 1, eos_token_id: int | None = None,
                 pad_token_id: int | None = None, **generate_kwargs) -> list[Generation]:
        """Answer with the KV cache and decode a mask for every generated [SEG].

        batch: prompt-only ``input_ids``/``attention_mask`` (left-padded), ``pixel_values``, ``sam_images`` or
        ``sam_embeddings``, ``resize_hw``, ``orig_hw``. Returns B * m generations, the m paths of image b at
        rows b*m .. b*m+m-1. ``generate_kwargs`` go to transformers' ``generate`` (e.g. ``logits_processor``,
        ``bad_words_ids``). The [SEG] state comes from the generation's own hidden states (``predicting``: the
        state that produced [SEG]); ``seg_state=token`` needs the state of [SEG] as input, which costs one extra
        forward pass over the whole sequence.
        """
        m = num_return_sequences
        ids = batch["input_ids"]
        prompt_len = ids.shape[1]
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        # The image placeholder is not text: a generated one would be taken for an image token by any later pass
        # over the sequence (seg_state=token, a teacher-forced check), which has no image features for it.
        suppress = [self.image_token_id, *(generate_kwargs.pop("suppress_tokens", None) or [])]
        out = self.lvlm.generate(input_ids=ids, attention_mask=batch["attention_mask"],
                                 **self.vision_inputs(batch, ids), max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, num_return_sequences=m, output_hidden_states=True,
                                 output_logits=True, return_dict_in_generate=True, eos_token_id=eos_token_id,
                                 pad_token_id=pad_token_id, suppress_tokens=suppress, **sampling, **generate_kwargs)
        gen = out.sequences[:, prompt_len:]  # [B*m, T]
        prefill = out.hidden_states[0][-1]  # [B*m, L, H]
        if self.seg_state == "predicting":
            # Row t of this stack is the last-layer state whose logits chose generated token t.
            states = torch.cat([prefill[:, -1:]] + [h[-1] for h in out.hidden_states[1:]], dim=1)
        else:
            mask = torch.cat([batch["attention_mask"].repeat_interleave(m, 0), (gen != pad_token_id).long()], 1)
            full = self.lvlm(input_ids=out.sequences, attention_mask=mask, output_hidden_states=True,
                             **self.vision_inputs(repeat_rows(_vision_only(batch), m), out.sequences))
            states = full.hidden_states[-1][:, prompt_len:]
        ended = _ended(gen, eos_token_id)
        seg_r, seg_t = ((gen == self.seg_token_id) & ~ended.shifted).nonzero(as_tuple=True)
        emb = batch.get("sam_embeddings")
        if emb is None:
            emb = self.encode_images(batch["sam_images"])
        rep = lambda xs: [x for x in xs for _ in range(m)]  # noqa: E731  (row order of HF's expansion)
        grids = batch.get("token_grid")
        decoded = self.segment(emb.repeat_interleave(m, 0), self.image_states(prefill, ids.repeat_interleave(m, 0)),
                               states[seg_r, seg_t], seg_r, rep(batch["resize_hw"]), rep(batch["orig_hw"]),
                               rep(grids) if grids else None)
        logp = torch.stack([lg.float().log_softmax(-1) for lg in out.logits], 1).gather(2, gen[..., None])[..., 0]
        valid = ~ended.shifted
        mean_logp = (logp * valid).sum(1) / valid.sum(1).clamp_min(1)
        return [Generation(tokens=gen[r][valid[r]].tolist(), decoded=decoded[r], n_seg=int((seg_r == r).sum()),
                           mean_logprob=float(mean_logp[r]), truncated=not bool(ended.any_eos[r]))
                for r in range(gen.shape[0])]


@dataclass
class Generation:
    """One generated answer: its tokens (up to and including EOS), masks of its [SEG] tokens, the mean token
    log-probability (for tie-breaking votes) and whether ``max_new_tokens`` cut it."""

    tokens: list[int]
    decoded: Decoded
    n_seg: int
    mean_logprob: float
    truncated: bool


@dataclass
class _Ended:
    shifted: torch.Tensor  # [R, T] True strictly after the first EOS (padding)
    any_eos: torch.Tensor  # [R]


def _vision_only(batch: dict) -> dict:
    return {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}


def _ended(gen: torch.Tensor, eos: int | None) -> _Ended:
    if eos is None:
        z = torch.zeros_like(gen, dtype=torch.bool)
        return _Ended(z, z[:, 0])
    is_eos = gen == eos
    after = (is_eos.cumsum(1) - is_eos.long()) > 0
    return _Ended(after, is_eos.any(1))
