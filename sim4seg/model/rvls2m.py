"""RVLS2M: Region-aware Vision-Language Similarity to Mask (paper Section 3.1, Algorithm 1).

Algorithm 1, step by step, one function per equation::

    sim    = similarity(phi(E_img), phi(E_seg))     # Eq. 4   [B, n]
    sim    = normalize(sim, "softmax")              # Eq. 5   [B, n]  (as log-probabilities)
    R      = region_scores(sim, grid=g, log=True)   # Eq. 6-7 [B, g, g] (log of the cell means)
    cells  = select_cells(R, "topk", k=k)           # Eq. 8   bool [B, g, g]
    prompt = to_mask_prompt(cells, orig_hw)         # SAM's dense mask input [B, 1, 256, 256]

:func:`region_mask` runs the first four; the Sim4Seg module feeds ``to_mask_prompt`` to SAM (Eq. 9).
:func:`perturb_cells` is the test-time-scaling perturbation g(M_region, theta) of Eq. 12.
Everything is batched; no Python loop runs over cells or images.

The grid the model saw: a CLIP tower (LLaVA) gives a square grid of n tokens from a square view of the image (its
centre crop, or the image padded to a square), and Eq. 6 lays them out. Qwen2.5-VL gives the (H'/28) x (W'/28) grid
of merged patches of the whole image resized to H' x W' (multiples of 28, aspect ratio kept up to rounding),
usually not square: ``token_grid`` passes that grid to Eqs. 6-7, and ``clip_view="resize"`` places the g x g
cells on the whole image, each axis on its own scale.

Why log space: the phi-space dot products can spread by hundreds, and then the softmax probabilities of most
tokens are exactly 0 in floating point; their cells would tie and top-k would fill up with the top-left cells.
Eq. 7's cell means taken in log space (log-sum-exp) keep the exact order of the pooled softmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from sim4seg.errors import UserError

STRATEGIES = ("topk", "ratio", "threshold")
NORMALIZATIONS = ("softmax", "minmax")
CLIP_VIEWS = ("center_crop", "pad", "resize")  # model.clip_view: how the LVLM sees the image


class RVLS2MSettingError(UserError, ValueError):
    """An impossible ``rvls2m.*`` setting: a ValueError for library callers, one line at the entry points."""


@dataclass
class RVLS2MConfig:
    """Settings of the module (Hydra group ``rvls2m``); defaults are the paper's best (g=16, k=36).

    Checked on construction, so a run with an impossible setting stops before any model is built.
    """

    enabled: bool = True
    at_inference_only: bool = False  # plug into a model trained without RVLS2M (paper Table 4)
    grid: int = 16
    strategy: str = "topk"
    k: int = 36
    ratio: float = 0.15
    threshold: float = 0.5
    normalize: str = "softmax"
    project: bool = True  # phi-project image states as the published code does (resolves 4096-vs-256 dims)
    on: float = 1.0
    off: float = 0.0

    def __post_init__(self) -> None:
        g = self.grid
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise RVLS2MSettingError(f"rvls2m.grid={g!r} must be an integer >= 1 (the paper uses 16)")
        if self.strategy not in STRATEGIES:
            raise RVLS2MSettingError(f"rvls2m.strategy={self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.strategy == "topk" and (isinstance(self.k, bool) or not isinstance(self.k, int)
                                        or not 1 <= self.k <= g * g):
            raise RVLS2MSettingError(f"rvls2m.k={self.k!r} must be an integer between 1 and {g * g} "
                                     f"(rvls2m.grid={g} has {g}x{g} cells)")
        if self.strategy == "ratio" and not 0 < self.ratio <= 1:
            raise RVLS2MSettingError(f"rvls2m.ratio={self.ratio!r} must be in (0, 1] (a fraction of the cells)")
        if self.strategy == "threshold" and not 0 <= self.threshold <= 1:
            raise RVLS2MSettingError(f"rvls2m.threshold={self.threshold!r} must be in [0, 1] (after min-max "
                                     "scaling of the region scores)")
        if self.normalize not in NORMALIZATIONS:
            raise RVLS2MSettingError(f"rvls2m.normalize={self.normalize!r}: use one of "
                                     f"{', '.join(NORMALIZATIONS)}")


class Region(NamedTuple):
    """Output of :func:`region_mask`: cells bool [B, g, g]; scores [B, g, g] (log of Eq. 7 for softmax, Eq. 7
    for minmax; only their order is used downstream); similarity: Eq. 4's dot products [B, n]."""

    cells: torch.Tensor
    scores: torch.Tensor
    similarity: torch.Tensor


def similarity(image_states: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Eq. 4: dot product of every image-token state with the [SEG] state.

    image_states: [B, n, d]; seg: [B, d] -> [B, n]
    """
    return torch.einsum("bnd,bd->bn", image_states, seg)


def normalize(sim: torch.Tensor, how: str = "softmax") -> torch.Tensor:
    """Eq. 5 over the n image tokens. [B, n] -> [B, n]

    ``softmax`` (paper) is returned as log-probabilities, log softmax(sim): the probabilities themselves
    underflow to 0 far below the maximum (see the module docstring). ``minmax``: per-row min-max scaling to
    [0, 1] (published code).
    """
    if how == "softmax":
        return sim.log_softmax(dim=-1)
    if how == "minmax":
        lo = sim.amin(dim=-1, keepdim=True)
        hi = sim.amax(dim=-1, keepdim=True)
        return (sim - lo) / (hi - lo).clamp_min(1e-12)
    raise RVLS2MSettingError(f"rvls2m.normalize={how!r}: use one of {', '.join(NORMALIZATIONS)}")


def token_map(sim_norm: torch.Tensor, fill: float = 0.0,
              token_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Eq. 6: lay the n scores row-major on an h' x w' map, h' = floor(sqrt n), w' = ceil(n / h').

    Eq. 6 is right for the square token grids of CLIP towers (n = h'^2). ``token_grid`` = (h', w'), the rows and
    columns the LVLM's tokens really form, row-major, h' w' = n (Qwen2.5-VL: H'/28 x W'/28, see the module
    docstring), replaces Eq. 6's guess. Slots past n (Eq. 6 when n is not h' * w') hold ``fill``: 0, or -inf for
    log-scores. [B, n] -> [B, h', w']
    """
    b, n = sim_norm.shape
    if token_grid is not None:
        h, w = token_grid
        if h * w != n:
            raise ValueError(f"token_map: a {h}x{w} token grid holds {h * w} tokens, not {n}")
        return sim_norm.reshape(b, h, w)
    h = math.isqrt(n)
    w = math.ceil(n / h)
    return F.pad(sim_norm, (0, h * w - n), value=fill).view(b, h, w)


def _axis_means(length: int, grid: int, like: torch.Tensor) -> torch.Tensor:
    """Eq. 7 along one axis of the token map as weights [grid, length] (each row sums to 1): block means when
    ``grid`` divides ``length``; otherwise linear upsampling to the next multiple of ``grid`` first."""
    up = math.ceil(length / grid) * grid
    eye = torch.eye(length, dtype=like.dtype, device=like.device)
    if up != length:  # row i of the result: where input position i lands after upsampling
        eye = F.interpolate(eye[None], size=up, mode="linear", align_corners=False)[0]
    return eye.T.reshape(grid, up // grid, length).mean(1)


def region_scores(sim_norm: torch.Tensor, grid: int = 16, log: bool = False,
                  token_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Eqs. 6-7: mean score of each of g x g non-overlapping cells of the token map. [B, n] -> [B, g, g]

    When h' and w' are multiples of g, cell (k, l) is the mean of an (h'/g) x (w'/g) block: exactly Eq. 7 for the
    square token grids of CLIP (h' = w', b = h'/g). Otherwise (e.g. g = 32 or 64 on a 16 x 16 grid, paper Fig. 6,
    or a rectangular Qwen2.5-VL grid, ``token_grid``, see :func:`token_map`) each side is first upsampled linearly
    to its next multiple of g, then block-averaged: every cell covers 1/g of the view's height and 1/g of its
    width. Both are one separable linear map with non-negative weights A_h [g, h'], A_w [g, w'].

    ``log=True``: ``sim_norm`` holds log-scores (``normalize(.., "softmax")``) and the result is the log of the
    same cell means, log sum_uv A_h[k, u] A_w[l, v] exp(x_uv), by log-sum-exp: exact where the means underflow.
    """
    m = token_map(sim_norm, -math.inf if log else 0.0, token_grid)
    _, h, w = m.shape
    a_h, a_w = _axis_means(h, grid, m), _axis_means(w, grid, m)
    if not log:
        return torch.einsum("ku,buv,lv->bkl", a_h, m, a_w)
    cols = torch.logsumexp(m[:, :, None, :] + a_w.log()[None, None], dim=-1)  # [B, h', g]
    return torch.logsumexp(a_h.log()[None, :, :, None] + cols[:, None], dim=2)  # [B, g, g]


def select_cells(scores: torch.Tensor, strategy: str = "topk", k: int = 36, ratio: float = 0.15,
                 threshold: float = 0.5) -> torch.Tensor:
    """Eq. 8's tau: which cells form the region mask. [B, g, g] -> bool [B, g, g]

    ``topk``: exactly k cells, ties to the lower flat index; ``ratio``: the top round(ratio * g^2) cells (at
    least 1); both use only the order of ``scores`` (log-scores give the same cells). ``threshold``: cells >= t
    after per-sample min-max scaling of the scores themselves.
    """
    b, g, _ = scores.shape
    flat = scores.reshape(b, g * g)
    if strategy == "threshold":
        lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        return ((flat - lo) / (hi - lo).clamp_min(1e-12) >= threshold).view(b, g, g)
    if strategy == "ratio":
        k = max(1, round(ratio * g * g))
    elif strategy != "topk":
        raise RVLS2MSettingError(f"rvls2m.strategy={strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not 0 < k <= g * g:
        raise RVLS2MSettingError(f"rvls2m.k={k} must be between 1 and {g * g} for a {g}x{g} grid")
    # A stable descending sort keeps equal scores in index order, so ties go to the lower flat index.
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices[:, :k]
    cells = torch.zeros_like(flat, dtype=torch.bool)
    cells.scatter_(1, order, True)
    return cells.view(b, g, g)


def region_mask(image_states: torch.Tensor, seg: torch.Tensor, cfg: RVLS2MConfig,
                token_grid: tuple[int, int] | None = None) -> Region:
    """Algorithm 1 (after phi): the cells, their region scores and the similarities (see :class:`Region`).

    image_states: [B, n, d]; seg: [B, d] (both already phi-projected, or both raw); token_grid: the (h', w') the
    n tokens form (:func:`token_map`), None for a CLIP tower's square grid.
    """
    # float64: distinct float32 similarities stay distinct after subtracting softmax's log-normaliser.
    sim = similarity(image_states.double(), seg.double())
    log = cfg.normalize == "softmax"
    scores = region_scores(normalize(sim, cfg.normalize), cfg.grid, log=log, token_grid=token_grid)
    # threshold scales the cell means themselves, not their logs; topk/ratio see only the order.
    by = scores.exp() if log and cfg.strategy == "threshold" else scores
    return Region(select_cells(by, cfg.strategy, cfg.k, cfg.ratio, cfg.threshold), scores, sim)


def view_box(orig_hw: torch.Tensor, clip_view: str) -> tuple[torch.Tensor, ...]:
    """Where the LVLM's view lies on each original image: (top, left, height, width), each [B] (float64).

    ``center_crop``: the central min(H, W) square (CLIP's processor); ``pad``: the max(H, W) square with the image
    centred (LLaVA-1.5); ``resize``: the whole image (Qwen2.5-VL resizes it without cropping). orig_hw: [B, 2]
    """
    if clip_view not in CLIP_VIEWS:
        raise ValueError(f"clip_view={clip_view!r}: use one of {', '.join(CLIP_VIEWS)}")
    h, w = orig_hw[:, 0], orig_hw[:, 1]
    if clip_view == "resize":
        return torch.zeros_like(h), torch.zeros_like(w), h, w
    side = torch.minimum(h, w) if clip_view == "center_crop" else torch.maximum(h, w)
    return (h - side) / 2, (w - side) / 2, side, side


def _axis_cells(length: torch.Tensor, view_start: torch.Tensor, view_len: torch.Tensor, scale: torch.Tensor,
                size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``size`` prompt pixels along one axis: the grid cell its centre falls in, and whether it is
    inside both the image and the CLIP view. All inputs are [B]; outputs [B, size]."""
    centre = (torch.arange(size, device=length.device, dtype=torch.float64) + 0.5)[None] / scale[:, None]
    cell = torch.floor((centre - view_start[:, None]) * grid / view_len[:, None]).long()
    valid = (centre < length[:, None]) & (cell >= 0) & (cell < grid)
    return cell.clamp(0, grid - 1), valid


def to_mask_prompt(cells: torch.Tensor, orig_hw: Sequence[tuple[int, int]], clip_view: str = "center_crop",
                   size: int = 256, on: float = 1.0, off: float = 0.0) -> torch.Tensor:
    """Place each selected cell on the part of SAM's frame that shows the same image region.

    The g x g grid spans the LVLM's view of the original image (:func:`view_box`): ``center_crop`` = the central
    min(H, W) square (CLIP's processor), ``pad`` = the max(H, W) square with the image centred (LLaVA-1.5
    padding), ``resize`` = the whole image (Qwen2.5-VL; a cell is 1/g of its height by 1/g of its width). SAM's frame is
    the image resized so its longest side fills ``size`` (SAM's low-res mask input: 256 for ViT-H and LiteMedSAM),
    padded bottom/right. Pixels outside the image or the view stay ``off``.

    cells: bool [B, g, g]; orig_hw: B pairs (H, W) -> float [B, 1, size, size]
    """
    b, g, _ = cells.shape
    if len(orig_hw) != b:
        raise ValueError(f"to_mask_prompt: {b} cell maps but {len(orig_hw)} image sizes")
    hw = torch.tensor(orig_hw, dtype=torch.float64, device=cells.device)
    top, left, vh, vw = view_box(hw, clip_view)
    h, w = hw[:, 0], hw[:, 1]
    scale = size / torch.maximum(h, w)
    rows, rvalid = _axis_cells(h, top, vh, scale, size, g)
    cols, cvalid = _axis_cells(w, left, vw, scale, size, g)
    picked = cells[torch.arange(b, device=cells.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    inside = picked & rvalid[:, :, None] & cvalid[:, None, :]
    out = torch.full((b, 1, size, size), off, dtype=torch.float32, device=cells.device)
    out[:, 0][inside] = on
    return out


def perturb_cells(cells: torch.Tensor, scores: torch.Tensor, n: int, flip_p: float = 0.05, k_jitter: int = 4,
                  shift: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 12's g(M_region, theta_j): n perturbed copies of each region mask for test-time scaling.

    Copy 0 is the unperturbed mask (so n = 1 equals plain inference). Others re-select top-(k + dk) cells with
    dk uniform in [-k_jitter, k_jitter], shift by up to one cell in each direction (if ``shift``), then flip each
    cell with probability ``flip_p``. cells, scores: [B, g, g] -> bool [B, n, g, g]
    """
    b, g, _ = cells.shape
    dev = cells.device
    out = cells[:, None].repeat(1, n, 1, 1)
    if n == 1:
        return out
    m = n - 1
    k = cells.flatten(1).sum(-1)  # [B]
    dk = torch.randint(-k_jitter, k_jitter + 1, (b, m), generator=generator).to(dev)
    kk = (k[:, None] + dk).clamp(1, g * g)  # [B, m]
    rank = torch.sort(scores.flatten(1), dim=-1, descending=True, stable=True).indices.argsort(-1)  # [B, g*g]
    sel = rank[:, None, :] < kk[:, :, None]  # [B, m, g*g]
    sel = sel.view(b, m, g, g)
    if shift:
        dy, dx = (torch.randint(-1, 2, (2, b, m), generator=generator).to(dev))
        yy = (torch.arange(g, device=dev)[None, None, :] - dy[..., None])  # [B, m, g] source rows
        xx = (torch.arange(g, device=dev)[None, None, :] - dx[..., None])
        vy, vx = (yy >= 0) & (yy < g), (xx >= 0) & (xx < g)
        bi = torch.arange(b, device=dev)[:, None, None, None]
        mi = torch.arange(m, device=dev)[None, :, None, None]
        sel = sel[bi, mi, yy.clamp(0, g - 1)[..., None], xx.clamp(0, g - 1)[:, :, None, :]]
        sel = sel & vy[..., None] & vx[:, :, None, :]
    flips = torch.rand((b, m, g, g), generator=generator).to(dev) < flip_p
    out[:, 1:] = sel ^ flips
    return out
