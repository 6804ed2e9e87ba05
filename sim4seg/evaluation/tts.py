"""Test-time scaling (paper Section 3.3) in one place: candidates and their selection.

As segment-anything's predictor does (``set_image`` once, ``predict`` many times), each image is embedded by
SAM once; its m answer paths come from one ``generate`` call for the whole batch, and the n perturbed region
masks of every path from one mask-decoder call per image.

- Paths: path 0 is the greedy answer, the same one the rows without test-time scaling use, so the m=1 point of
  a sweep ``tts.m=[1,2,4,8]`` is plain inference; paths 1..m-1 are samples (temperature, top-p).
- Seeds: every random draw (a sampled path's tokens, a path's perturbations) comes from a generator seeded by
  (``seed``, sample id, path), never from a shared stream, so a sample's rows do not depend on ``batch_size``
  or on which samples share its batch.
- Selection: the paper picks the final mask by its score against the ground truth (Eq. 13), an oracle no
  deployed system has: ``select_mask=oracle``, labelled as such in every report. ``consensus`` (highest mean IoU
  to the other candidates) and ``sam_score`` (SAM's predicted IoU) are deployable; they ignore the (empty)
  candidates of paths without ``[SEG]`` unless no path has one. Diagnosis: ``oracle`` (correct if any path is)
  or ``majority`` (vote over paths, ties to the highest mean token log-probability).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from sim4seg.metrics import mask_counts
from sim4seg.model.processor import repeat_rows
from sim4seg.model.rvls2m import perturb_cells
from sim4seg.model.sim4seg import Generation, Sim4Seg

MASK_SELECTIONS = ("oracle", "consensus", "sam_score")
DIAGNOSIS_SELECTIONS = ("oracle", "majority")


def sample_seed(seed: int, sample_id: str, what: str, path: int) -> int:
    """A 63-bit seed for one random stream of one sample: stable across runs, machines and batch layouts."""
    digest = hashlib.sha256(f"{seed}/{sample_id}/{what}/{path}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class RowSampler(LogitsProcessor):
    """Sampling with one generator per row (None: that row stays greedy). ``generate`` runs greedily over the
    scores returned here, in which only the drawn token is finite, so row r's tokens depend on its own seed and
    its own logits only. scores [R, V] -> [R, V]"""

    def __init__(self, seeds: Sequence[int | None], temperature: float, top_p: float):
        self.gens = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]
        self.warp = LogitsProcessorList([TemperatureLogitsWarper(float(temperature)), TopPLogitsWarper(float(top_p))])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = self.warp(input_ids, scores.float()).softmax(-1).cpu()
        out = scores.clone()
        for r, g in enumerate(self.gens):
            if g is not None:
                pick = int(torch.multinomial(probs[r], 1, generator=g))
                out[r] = float("-inf")
                out[r, pick] = 0.0
        return out


def generate_paths(model: Sim4Seg, batch: dict, m: int, seed: int, temperature: float, top_p: float,
                   max_new_tokens: int, eos_token_id: int, pad_token_id: int,
                   logits_processor: LogitsProcessorList | None = None) -> list[list[Generation]]:
    """m answers per image in one ``generate`` call: path 0 greedy, paths 1..m-1 sampled with per-sample seeds.

    batch: a left-padded generation batch of B images with ``sam_embeddings`` [B, P, E, E]. ``logits_processor``
    (e.g. a benchmark's forced tokens) runs before the sampler. -> B lists of m generations.
    """
    ids = [str(i) for i in batch["ids"]]
    procs = LogitsProcessorList(logits_processor or [])
    if m > 1:
        batch = repeat_rows(batch, m)  # row b*m + j is path j of image b
        seeds = [None if j == 0 else sample_seed(seed, i, "path", j) for i in ids for j in range(m)]
        procs.append(RowSampler(seeds, temperature, top_p))
    gens = model.generate(batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                          pad_token_id=pad_token_id, logits_processor=procs)
    return [gens[b * m:(b + 1) * m] for b in range(len(ids))]


@dataclass
class Candidates:
    """The m x n candidate masks of one image. masks: bool [m, n, H, W] (copy 0 of each path is its unperturbed
    mask; paths without [SEG] hold empty masks); sam_iou: [m, n]; has_seg: bool [m]; finite: every logit was."""

    masks: torch.Tensor
    sam_iou: torch.Tensor
    has_seg: torch.Tensor
    finite: bool

    def prefix(self, mi: int, ni: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first ``mi`` paths x ``ni`` masks, flattened path-major: masks [mi*ni, H, W], sam_iou and
        has_seg [mi*ni]; candidate c is mask c % ni of path c // ni."""
        return (self.masks[:mi, :ni].flatten(0, 1), self.sam_iou[:mi, :ni].flatten(),
                self.has_seg[:mi, None].expand(mi, ni).flatten())


def candidates(model: Sim4Seg, paths: list[Generation], sam_embedding: torch.Tensor, resize_hw: tuple[int, int],
               orig_hw: tuple[int, int], n: int, seed: int, sample_id: str, flip_p: float, k_jitter: int,
               shift: bool) -> Candidates:
    """n region-mask perturbations (Eq. 12) of the first [SEG] of each path, decoded in one SAM decoder call.

    sam_embedding: [P, E, E] of this image. Copy 0 is the mask ``generate`` already decoded; with RVLS2M off
    there is nothing to perturb and every copy is that mask.
    """
    h, w = orig_hw
    m = len(paths)
    masks = torch.zeros((m, n, h, w), dtype=torch.bool)
    iou = torch.zeros((m, n))
    has_seg = torch.tensor([p.n_seg > 0 for p in paths])
    finite = True
    extra_embeds, extra_cells, owners = [], [], []
    for j, p in enumerate(paths):
        if not p.n_seg:  # no [SEG]: empty masks (flagged no_seg in the row)
            continue
        d = p.decoded
        finite &= bool(torch.isfinite(d.logits[0]).all())
        masks[j] = (d.logits[0] > 0).cpu()  # copies 1.. stay this mask unless perturbed below
        iou[j] = float(d.iou[0])
        if n > 1 and d.cells is not None:
            gen = torch.Generator().manual_seed(sample_seed(seed, sample_id, "perturb", j))
            extra_cells.append(perturb_cells(d.cells[:1], d.scores[:1], n, flip_p, k_jitter, shift, gen)[0, 1:])
            extra_embeds.append(d.embeds[:1].expand(n - 1, -1))
            owners.append(j)
    if extra_cells:
        more, more_iou = model.decode(sam_embedding, torch.cat(extra_embeds), torch.cat(extra_cells), resize_hw,
                                      orig_hw)
        finite &= bool(torch.isfinite(more).all())
        more, more_iou = (more > 0).cpu().view(len(owners), n - 1, h, w), more_iou.float().cpu().view(-1, n - 1)
        for i, j in enumerate(owners):
            masks[j, 1:], iou[j, 1:] = more[i], more_iou[i]
    return Candidates(masks, iou, has_seg, finite)


def pairwise_iou(masks: torch.Tensor) -> torch.Tensor:
    """bool [c, H, W] -> [c, c] IoU (empty/empty = 1), exact integer counts."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou_with(masks: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """bool [c, H, W] vs bool [H, W] -> [c] IoU (empty/empty = 1), from sim4seg.metrics' exact counts."""
    c = mask_counts(list(masks), [gt] * masks.shape[0])
    return torch.from_numpy(np.where(c[:, 1] > 0, c[:, 0] / np.maximum(c[:, 1], 1), 1.0))


def select_mask(masks: torch.Tensor, how: str, sam_iou: torch.Tensor | None = None, gt: torch.Tensor | None = None,
                has_seg: torch.Tensor | None = None) -> int:
    """Index of the chosen candidate among bool [c, H, W]; sam_iou, has_seg: [c].

    The oracle takes the candidate closest to the ground truth (for one image gIoU = cIoU = IoU, so the paper's
    mean(gIoU, cIoU) is the IoU). The deployable rules choose among candidates of paths that emitted [SEG]
    (``has_seg``) unless none did: empty candidates agree perfectly with each other and would win consensus.
    """
    if how not in MASK_SELECTIONS:
        raise ValueError(f"tts.select_mask={how!r}: use one of {', '.join(MASK_SELECTIONS)}")
    if masks.shape[0] == 1:
        return 0
    if how == "oracle":
        return int(iou_with(masks, gt).argmax())
    pool = torch.arange(masks.shape[0])
    if has_seg is not None and bool(has_seg.any()):
        pool = pool[has_seg]
    if pool.numel() == 1:
        return int(pool[0])
    if how == "consensus":
        iou = pairwise_iou(masks[pool])
        return int(pool[((iou.sum(1) - 1) / (pool.numel() - 1)).argmax()])
    return int(pool[sam_iou[pool].argmax()])


def majority(labels: list[tuple[str, ...]], logprobs: list[float]) -> int:
    """Index of a path whose label set got the most votes; ties go to the path with the highest log-probability."""
    votes = Counter(labels)
    top = max(votes.values())
    return max((i for i, lab in enumerate(labels) if votes[lab] == top), key=lambda i: logprobs[i])
