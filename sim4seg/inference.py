"""The one inference path for people: a file (or picture) and a question -> answer, diagnosis, mask, region mask,
SAM's predicted IoU. ``sim4seg predict`` (one image or a batch), the app and ``python -m sim4seg.bench app`` all
call :class:`Predictor`; it runs on the GPU when one is present (``sim4seg.runtime.device``).

Test-time scaling is the evaluation's own (``sim4seg.evaluation.tts``): m answer paths (path 0 greedy, the rest
sampled with per-request seeds), n perturbed region masks per path, and a deployable selection only (consensus
or SAM's score; the paper's oracle needs the ground truth). The diagnosis is the majority over the paths'
diagnosis spans, ties to the most probable path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import LogitsProcessorList

from sim4seg.config import CONFIG_DIR
from sim4seg.data.io import DEFAULT_MAX_PIXELS, load_image
from sim4seg.data.readers import DEFAULT, ReadOptions
from sim4seg.data.schema import RecordError
from sim4seg.errors import UserError
from sim4seg.evaluation import tts
from sim4seg.evaluation.answer import decode_answer
from sim4seg.evaluation.figures import region_on_image
from sim4seg.evaluation.run import COT_MIN_BUDGET
from sim4seg.inputs import validate_query, validate_tts
from sim4seg.metrics import diagnosis_span, vote_gives_mask
from sim4seg.model.checkpoint import load_run, require_finished
from sim4seg.model.processor import Processor
from sim4seg.model.sim4seg import Sim4Seg
from sim4seg.runtime import device as default_device

DEFAULT_BUDGET = 128  # new tokens for seg/diagnosis answers; CoT answers get COT_MIN_BUDGET


@dataclass
class Prediction:
    """One answered request. mask, region: bool [H, W] at the image's size (region None with RVLS2M off);
    seg_masks: every [SEG]'s mask of the answer path, bool [s, H, W]; finding: the answer gives a (non-empty)
    mask, False for "no finding" (flagged ``no_finding``); timings in seconds."""

    answer: str
    diagnosis: str
    mask: np.ndarray
    region: np.ndarray | None
    sam_iou: float | None
    n_seg: int
    flags: list[str]
    seg_masks: np.ndarray
    finding: bool = True
    timings: dict[str, float] = field(default_factory=dict)


class _Stopwatch:
    """Seconds spent inside a module's forward calls (forward hooks), waiting for the GPU first."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.total, self._t0 = 0.0, 0.0
        module.register_forward_pre_hook(lambda *_: self._start())
        module.register_forward_hook(lambda *_: self._stop())

    def _start(self) -> None:
        _sync()
        self._t0 = time.perf_counter()

    def _stop(self) -> None:
        _sync()
        self.total += time.perf_counter() - self._t0


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Predictor:
    """A model loaded once, answering any number of requests (images of any size, any supported format).

    :meth:`from_run` loads a finished run or export directory (what ``predict`` and the app do); the constructor
    takes a built model (benchmarks). max_new_tokens: None = 128, or 384 for CoT-trained models.
    """

    def __init__(self, model: Sim4Seg, proc: Processor, cfg: DictConfig, max_new_tokens: int | None = None,
                 device: torch.device | None = None, name: str = ""):
        self.model, self.proc, self.cfg, self.name = model, proc, cfg, name
        self.device = device or default_device()
        self.model.to(self.device).eval()
        self.answer_format = str(cfg.data.answer_format)
        self.fmt = self.answer_format if self.answer_format in ("cot", "diagnosis") else "auto"
        self.max_new_tokens = max_new_tokens or (COT_MIN_BUDGET if self.answer_format == "cot" else DEFAULT_BUDGET)
        self.max_pixels = int(cfg.data.get("max_pixels", DEFAULT_MAX_PIXELS))
        self.tts = OmegaConf.load(CONFIG_DIR / "eval.yaml").tts  # temperature, top_p and perturbation settings
        self._decoder_time = _Stopwatch(self.model.sam.mask_decoder)

    @classmethod
    def from_run(cls, ckpt: str | Path, max_new_tokens: int | None = None) -> Predictor:
        require_finished(ckpt)
        model, proc, cfg = load_run(ckpt)
        return cls(model, proc, cfg, max_new_tokens, name=str(ckpt))

    def predict_file(self, path: str | Path, query: str, options: ReadOptions = DEFAULT, max_pixels: int | None = None,
                     **kw) -> tuple[np.ndarray, Prediction]:
        """Read ``path`` with the one reader, then :meth:`predict`: (the picture as read, RGB uint8 [H, W, 3], its
        prediction); ``timings['reading']`` is the file's."""
        query = validate_query(query)
        t0 = time.perf_counter()
        try:
            image = load_image(path, max_pixels or self.max_pixels, options)
        except RecordError as e:
            raise UserError(str(e)) from None
        reading = time.perf_counter() - t0
        pred = self.predict(image, query, sample_id=Path(path).name, **kw)
        pred.timings = {"reading": reading, **pred.timings}
        return image, pred

    @torch.no_grad()
    def predict(self, image: np.ndarray, query: str, m: int = 1, n: int = 1, select: str = "consensus",
                seed: int = 0, sample_id: str = "", logits_processor: LogitsProcessorList | None = None) -> Prediction:
        """image: RGB uint8 [H, W, 3]. m answer paths x n region-mask perturbations (1, 1: plain inference).
        ``logits_processor`` goes to generation (e.g. a benchmark's or a test's forced tokens)."""
        query = validate_query(query)
        validate_tts(m, n, select)
        t0 = time.perf_counter()
        try:
            sample = self.proc.sample(image, query, None, None, sample_id)  # CLIP view, SAM frame, token ids
        except ValueError as e:
            raise UserError(str(e)) from None
        batch = self.proc.collate([sample], left_pad=True)
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        batch["ids"] = [sample_id]
        t = self.tts
        _sync()
        timings = {"preprocessing": time.perf_counter() - t0}
        t0 = time.perf_counter()
        batch["sam_embeddings"] = self.model.encode_images(batch.pop("sam_images"))
        _sync()
        timings["sam_encoder"] = time.perf_counter() - t0
        tok = self.proc.tokenizer
        self._decoder_time.total = 0.0
        t0 = time.perf_counter()
        paths = tts.generate_paths(self.model, batch, m, seed, t.temperature, t.top_p, self.max_new_tokens,
                                   tok.eos_token_id, tok.pad_token_id, logits_processor)[0]
        _sync()
        generation = time.perf_counter() - t0
        t0 = time.perf_counter()
        cand = tts.candidates(self.model, paths, batch["sam_embeddings"][0], batch["resize_hw"][0],
                              batch["orig_hw"][0], n, seed, sample_id, t.flip_p, t.k_jitter, t.shift)
        timings["generation"] = generation - self._decoder_time.total
        timings["decoding"] = self._decoder_time.total + time.perf_counter() - t0
        if not cand.finite:
            raise UserError("the model produced non-finite mask logits for this image (a broken checkpoint?)")
        answers = [decode_answer(tok, p.tokens) for p in paths]
        spans = [diagnosis_span(a, self.fmt) for a in answers]
        best = tts.majority([(s,) for s in spans], [p.mean_logprob for p in paths]) if m > 1 else 0
        masks, sam_iou, has_seg = cand.prefix(m, n)
        # most paths answered without [SEG] ("no finding"): no mask, as the evaluation decides
        voted = has_seg if vote_gives_mask([q.n_seg > 0 for q in paths]) else ~has_seg
        pick = tts.select_mask(masks, select, sam_iou, None, voted)
        owner = paths[pick // n]  # the path whose [SEG] the chosen mask comes from
        p = paths[best]
        h, w = image.shape[:2]
        region = None
        if owner.n_seg and owner.decoded.cells is not None:
            region = region_on_image(owner.decoded.cells[0].cpu(), (h, w), self.model.clip_view)
        finding = bool(masks[pick].any())
        flags = [f for f, on in (("no_seg", p.n_seg == 0), ("multi_seg", p.n_seg > 1), ("truncated", p.truncated),
                                 ("mask_from_other_path", pick // n != best and owner.n_seg > 0),
                                 ("no_finding", not finding)) if on]
        return Prediction(answer=answers[best], diagnosis=spans[best], mask=masks[pick].numpy(), region=region,
                          sam_iou=float(sam_iou[pick]) if owner.n_seg else None, n_seg=p.n_seg, flags=flags,
                          seg_masks=(p.decoded.logits > 0).cpu().numpy(), finding=finding, timings=timings)


def overlay(image: np.ndarray, mask: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """The picture with the RVLS2M region shaded orange and the mask filled red with its outline.
    image: RGB uint8 [H, W, 3]; mask, region: bool [H, W] -> RGB uint8 [H, W, 3]"""
    vis = image.copy()
    if region is not None:
        vis[region] = (0.7 * vis[region] + 0.3 * np.array([255, 128, 0])).astype(np.uint8)
    vis[mask] = (0.6 * vis[mask] + 0.4 * np.array([255, 0, 0])).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(vis, contours, -1, (255, 0, 0), max(1, min(image.shape[:2]) // 200))
    return vis


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """bool [H, W] -> a 0/255 single-channel PNG (the format ``data check`` and the datasets read)."""
    if not cv2.imwrite(str(path), mask.astype(np.uint8) * 255):
        raise UserError(f"{path}: could not write the mask PNG (is the folder writable?)")
