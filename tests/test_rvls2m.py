"""RVLS2M (paper Eqs. 4-8, Algorithm 1): hand-computed values per equation, the geometry of the SAM mask prompt,
the test-time-scaling perturbation, and hypothesis properties."""

from __future__ import annotations

import decimal
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import child_env
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sim4seg.model.rvls2m import (
    RVLS2MConfig,
    normalize,
    perturb_cells,
    region_mask,
    region_scores,
    select_cells,
    similarity,
    to_mask_prompt,
    token_map,
)

PROPS = settings(max_examples=40, deadline=None)


# ------------------------------------------------------------------------------------------------------------
# Eq. 4: similarity
# ------------------------------------------------------------------------------------------------------------
def test_similarity_is_dot_product_per_token():
    image = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.0, 5.0]]])  # [1, 3, 2]
    seg = torch.tensor([[2.0, 3.0]])  # [1, 2]
    # 1*2 + 2*3 = 8; 3*2 - 1*3 = 3; 0*2 + 5*3 = 15
    assert torch.equal(similarity(image, seg), torch.tensor([[8.0, 3.0, 15.0]]))


def test_similarity_is_per_sample():
    image = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])  # [2, 1, 2]: same image token for both samples
    seg = torch.tensor([[4.0, 9.0], [-2.0, 9.0]])
    assert torch.equal(similarity(image, seg), torch.tensor([[4.0], [-2.0]]))


# ------------------------------------------------------------------------------------------------------------
# Eq. 5: normalisation
# ------------------------------------------------------------------------------------------------------------
def test_normalize_softmax_hand_values():
    sim = torch.tensor([[0.0, math.log(2.0), math.log(5.0)]])  # exp -> 1, 2, 5; sum 8
    # returned as log-probabilities
    torch.testing.assert_close(normalize(sim, "softmax").exp(), torch.tensor([[1 / 8, 2 / 8, 5 / 8]]))


def test_normalize_softmax_is_over_tokens_not_batch():
    sim = torch.tensor([[0.0, 0.0], [100.0, 100.0]])
    torch.testing.assert_close(normalize(sim, "softmax").exp(), torch.full((2, 2), 0.5))


def test_normalize_softmax_keeps_tokens_far_below_the_maximum():
    sim = torch.tensor([[0.0, -200.0, -400.0]])
    assert (sim.softmax(-1)[0, 1:] == 0).all()  # what the probabilities would be in float32
    torch.testing.assert_close(normalize(sim, "softmax"), sim)  # log-probabilities: still ordered, exact


def test_normalize_minmax_hand_values():
    sim = torch.tensor([[2.0, 4.0, 6.0, 3.0], [-1.0, -1.0, 1.0, 0.0]])
    expected = torch.tensor([[0.0, 0.5, 1.0, 0.25], [0.0, 0.0, 1.0, 0.5]])
    torch.testing.assert_close(normalize(sim, "minmax"), expected)


def test_normalize_minmax_constant_row_is_finite_zero():
    out = normalize(torch.full((1, 5), 3.0), "minmax")
    assert torch.equal(out, torch.zeros(1, 5))


def test_normalize_rejects_unknown():
    with pytest.raises(ValueError, match="normalize"):
        normalize(torch.zeros(1, 3), "l2")


# ------------------------------------------------------------------------------------------------------------
# Eq. 6: token map
# ------------------------------------------------------------------------------------------------------------
def test_token_map_not_a_square():
    sim = torch.arange(1.0, 11.0)[None]  # n = 10 -> h' = floor(sqrt 10) = 3, w' = ceil(10 / 3) = 4
    expected = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 0.0, 0.0]]])
    assert torch.equal(token_map(sim), expected)


def test_token_map_row_major_eq6():
    n = 5  # h' = 2, w' = 3
    sim = torch.arange(1.0, n + 1)[None]
    m = token_map(sim)
    assert m.shape == (1, 2, 3)
    for i in range(n):  # M[u, v] = Sim[u * w' + v]
        assert m[0, i // 3, i % 3] == sim[0, i]
    assert m[0, 1, 2] == 0


def test_token_map_square():
    sim = torch.arange(32.0).view(2, 16)
    assert torch.equal(token_map(sim), torch.arange(32.0).view(2, 4, 4))


# ------------------------------------------------------------------------------------------------------------
# Eq. 7: region scores
# ------------------------------------------------------------------------------------------------------------
def _eq7(m: torch.Tensor, g: int) -> torch.Tensor:
    """Eq. 7 literally: b = floor(min(h', w') / g), mean of each b x b block."""
    bsz, h, w = m.shape
    b = min(h, w) // g
    out = torch.empty(bsz, g, g, dtype=m.dtype)
    for k in range(g):
        for l in range(g):  # noqa: E741 (the paper's index name)
            out[:, k, l] = m[:, b * k:b * (k + 1), b * l:b * (l + 1)].sum(dim=(1, 2)) / b**2
    return out


@pytest.mark.parametrize("g", [4, 16, 8, 1])
def test_region_scores_equal_eq7_block_means(g):
    gen = torch.Generator().manual_seed(g)
    # Integers: every block mean (sum / b^2, b a power of two) is exact, so the comparison can be exact.
    sim = torch.randint(0, 1000, (2, 256), generator=gen).double()
    r = region_scores(sim, grid=g)
    assert r.shape == (2, g, g)
    assert torch.equal(r, _eq7(sim.view(2, 16, 16), g))


def test_region_scores_g16_on_16x16_is_the_token_map():
    sim = torch.rand(3, 256, generator=torch.Generator().manual_seed(1))
    assert torch.equal(region_scores(sim, grid=16), sim.view(3, 16, 16))


def test_region_scores_g4_hand_block():
    sim = torch.zeros(1, 256)
    sim[0, 5 * 16 + 9] = 16.0  # token (5, 9) lies in block (5 // 4, 9 // 4) = (1, 2) of a 4 x 4 grid
    r = region_scores(sim, grid=4)
    expected = torch.zeros(1, 4, 4)
    expected[0, 1, 2] = 1.0  # 16 / 4^2
    assert torch.equal(r, expected)


def test_region_scores_g32_upsamples_bilinearly():
    sim = torch.rand(2, 256, generator=torch.Generator().manual_seed(2))
    r = region_scores(sim, grid=32)
    assert r.shape == (2, 32, 32)
    torch.testing.assert_close(r.mean(dim=(1, 2)), sim.mean(dim=1), rtol=0.03, atol=0)
    # bilinear interpolation never leaves the range of the data
    assert r.min() >= sim.min() - 1e-6 and r.max() <= sim.max() + 1e-6


def test_region_scores_g32_single_hot_token_maps_to_its_cells():
    u, v = 5, 9
    sim = torch.zeros(1, 256)
    sim[0, u * 16 + v] = 1.0
    r = region_scores(sim, grid=32)[0]
    # Token (u, v) covers cells (2u..2u+1, 2v..2v+1) of the 32 x 32 grid; bilinear spills one cell around them.
    block = torch.zeros(32, 32, dtype=torch.bool)
    block[2 * u:2 * u + 2, 2 * v:2 * v + 2] = True
    assert torch.equal(select_cells(r[None], "topk", k=4)[0], block)
    support = torch.zeros(32, 32, dtype=torch.bool)
    support[2 * u - 1:2 * u + 3, 2 * v - 1:2 * v + 3] = True
    assert (r[~support] == 0).all()
    assert (r[block] > 0).all()
    assert r[block].min() > r[support & ~block].max()


def test_region_scores_non_square_token_map():
    sim = torch.ones(1, 10)  # 3 x 4 map with two zero slots; upsampled to 4 x 4 for g = 2
    r = region_scores(sim, grid=2)
    assert r.shape == (1, 2, 2)
    assert r[0, 0, 0] == pytest.approx(1.0)  # top-left is away from the zero slots
    assert r[0, 1, 1] < 1.0  # bottom-right holds the zero slots


@pytest.mark.parametrize("n", [256, 577, 10])
@pytest.mark.parametrize("g", [1, 4, 8, 16, 32, 64])
def test_region_scores_in_log_space_are_the_log_of_the_cell_means(n, g):
    gen = torch.Generator().manual_seed(n + g)
    logp = (torch.randn(2, n, generator=gen, dtype=torch.float64) * 3).log_softmax(-1)
    torch.testing.assert_close(region_scores(logp, g, log=True).exp(), region_scores(logp.exp(), g))


def _eq67_weights(n: int, g: int) -> torch.Tensor:
    """Reference weights of Eqs. 6-7, cell x token [g*g, n]: each token alone through the literal recipe
    (row-major map, 2-D bilinear upsampling to a multiple of g if needed, block means)."""
    h = math.isqrt(n)
    w = math.ceil(n / h)
    m = F.pad(torch.eye(n, dtype=torch.float64), (0, h * w - n)).view(n, h, w)
    if h % g or w % g:
        h, w = math.ceil(h / g) * g, math.ceil(w / g) * g
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return m.view(n, g, h // g, g, w // g).mean(dim=(2, 4)).reshape(n, g * g).T


EXACT = decimal.Context(prec=40, Emin=-10**6, Emax=10**6)  # no underflow, far past float64's exp(-745)


def _exact_cell_means(sim: torch.Tensor, g: int) -> list[decimal.Decimal]:
    """Eq. 7's cell means of the softmax of ``sim``, times its denominator (which does not change their order),
    in exact arithmetic: sum_i W[c, i] exp(sim_i)."""
    e = [EXACT.exp(decimal.Decimal(float(x))) for x in sim]
    weights = _eq67_weights(len(e), g)
    value = [decimal.Decimal(0)] * (g * g)
    for c, i in weights.nonzero().tolist():
        value[c] = EXACT.add(value[c], EXACT.multiply(decimal.Decimal(float(weights[c, i])), e[i]))
    return value


@PROPS
@given(std=st.sampled_from([60.0, 120.0]), n=st.sampled_from([256, 576]), g=st.sampled_from([4, 8, 16, 32]),
       data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_prop_large_spreads_keep_the_exact_order_of_the_pooled_softmax(std, n, g, data, seed):
    """Issue 12.6: with float32 softmax probabilities, std 60 changed about 5 of k = 36 cells (std 120: 25),
    because cells far below the maximum all scored exactly 0. The selected cells must be a top-k of the exact
    cell means; cells equal to float64 resolution (neighbours that share one dominant token under bilinear
    upsampling differ by 1e-21 relative) are ties and go to the lower flat index."""
    k = data.draw(st.integers(1, g * g))
    sim = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * std  # Eq. 4's output, float32
    cells = region_mask(sim.view(1, n, 1), torch.ones(1, 1), RVLS2MConfig(grid=g, k=k)).cells.flatten().tolist()
    value = _exact_cell_means(sim, g)
    chosen = [v for v, c in zip(value, cells) if c]
    others = [v for v, c in zip(value, cells) if not c]
    assert len(chosen) == k
    if others:
        assert min(chosen) >= max(others) * decimal.Decimal(1 - 1e-12)


# ------------------------------------------------------------------------------------------------------------
# Eq. 8: cell selection
# ------------------------------------------------------------------------------------------------------------
def test_select_topk_hand():
    scores = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert torch.equal(select_cells(scores, "topk", k=2), torch.tensor([[[False, True], [True, False]]]))
    assert torch.equal(select_cells(scores, "topk", k=1), torch.tensor([[[False, True], [False, False]]]))


def test_select_topk_ties_go_to_lower_flat_index():
    scores = torch.zeros(1, 3, 3)
    expected = torch.zeros(1, 9, dtype=torch.bool)
    expected[0, :4] = True
    assert torch.equal(select_cells(scores, "topk", k=4), expected.view(1, 3, 3))
    scores = torch.tensor([[[1.0, 2.0, 2.0], [2.0, 0.0, 2.0], [5.0, 2.0, 0.0]]])
    # 5 first, then the 2s in flat order 1, 2, 3, 5, 7: k = 3 keeps flat 6, 1, 2
    cells = select_cells(scores, "topk", k=3).flatten()
    assert cells.nonzero().flatten().tolist() == [1, 2, 6]


def test_select_ratio():
    scores = torch.arange(16.0).view(1, 4, 4)
    top4 = torch.zeros(16, dtype=torch.bool)
    top4[12:] = True
    assert torch.equal(select_cells(scores, "ratio", ratio=0.25).flatten(), top4)  # round(0.25 * 16) = 4
    one = select_cells(scores, "ratio", ratio=0.01)  # round(0.16) = 0 -> at least 1
    assert one.sum() == 1 and one[0, 3, 3]
    assert select_cells(scores, "ratio", ratio=1.0).all()


def test_select_threshold_after_minmax():
    scores = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])  # min-max scaled: 0, 0.25, 0.5, 1
    assert torch.equal(select_cells(scores, "threshold", threshold=0.5), torch.tensor([[[False, False], [True, True]]]))
    assert torch.equal(select_cells(scores, "threshold", threshold=0.25), torch.tensor([[[False, True], [True, True]]]))
    # per sample: the same threshold on a scaled copy selects the same cells
    both = torch.cat([scores, scores * 100 - 7])
    sel = select_cells(both, "threshold", threshold=0.5)
    assert torch.equal(sel[0], sel[1])


def test_select_rejects_bad_settings():
    scores = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match="strategy"):
        select_cells(scores, "bogus")
    for k in (0, 17):
        with pytest.raises(ValueError, match="k="):
            select_cells(scores, "topk", k=k)


# ------------------------------------------------------------------------------------------------------------
# Algorithm 1: region_mask composes Eqs. 4-8
# ------------------------------------------------------------------------------------------------------------
def test_region_mask_hand_example():
    states = torch.arange(16.0).view(1, 16, 1)  # sim = token index; map rows 0..3 of 4 x 4
    seg = torch.ones(1, 1)
    cells, scores, sim = region_mask(states, seg, RVLS2MConfig(grid=2, k=1))
    # block (1, 1) holds tokens 10, 11, 14, 15: the highest
    assert torch.equal(cells, torch.tensor([[[False, False], [False, True]]]))
    assert scores.shape == (1, 2, 2)
    # log scores: 2 x 2 block means of a softmax sum to 1 / b^2
    torch.testing.assert_close(scores.exp().sum(), torch.tensor(0.25, dtype=torch.float64))
    assert scores[0, 1, 1] == scores.max()
    assert torch.equal(sim, torch.arange(16.0, dtype=torch.float64)[None])  # Eq. 4, kept for its spread


@pytest.mark.parametrize("cfg", [RVLS2MConfig(grid=4, k=3), RVLS2MConfig(grid=8, strategy="ratio", ratio=0.2),
                                 RVLS2MConfig(grid=4, strategy="threshold", threshold=0.7, normalize="minmax")])
def test_region_mask_composes_the_equations(cfg):
    gen = torch.Generator().manual_seed(3)
    states, seg = torch.randn(2, 64, 5, generator=gen), torch.randn(2, 5, generator=gen)
    cells, scores, _ = region_mask(states, seg, cfg)
    log = cfg.normalize == "softmax"
    sim = similarity(states.double(), seg.double())
    expected_scores = region_scores(normalize(sim, cfg.normalize), cfg.grid, log=log)
    assert torch.equal(scores, expected_scores)
    by = expected_scores.exp() if log and cfg.strategy == "threshold" else expected_scores
    assert torch.equal(cells, select_cells(by, cfg.strategy, cfg.k, cfg.ratio, cfg.threshold))


def test_region_mask_threshold_scales_the_cell_means_not_their_logs():
    states = torch.tensor([0.0, 0.0, 0.0, math.log(2.0), 0.0, 0.0, 0.0, math.log(3.0), 0.0]).view(1, 9, 1)
    # g = 3 on 3 x 3: the cell means are 1, 1, 1, 2, 1, 1, 1, 3, 1 (/ 12), min-max scaled 0, .., 0.5, .., 1.
    # Scaled as logs, cell 3 would be log 2 / log 3 = 0.63 and pass a threshold of 0.6.
    for t, expected in ((0.45, [3, 7]), (0.6, [7])):
        cells = region_mask(states, torch.ones(1, 1), RVLS2MConfig(grid=3, strategy="threshold", threshold=t)).cells
        assert cells.flatten().nonzero().flatten().tolist() == expected, t


def test_region_mask_normalisation_setting_is_used():
    gen = torch.Generator().manual_seed(4)
    states, seg = torch.randn(1, 64, 5, generator=gen), torch.randn(1, 5, generator=gen)
    _, soft, _ = region_mask(states, seg, RVLS2MConfig(grid=4, k=3, normalize="softmax"))
    _, mm, _ = region_mask(states, seg, RVLS2MConfig(grid=4, k=3, normalize="minmax"))
    assert not torch.allclose(soft, mm)


# ------------------------------------------------------------------------------------------------------------
# The mask prompt: geometry of CLIP's view inside SAM's frame
# ------------------------------------------------------------------------------------------------------------
# (H, W), view, grid g, cell (i, j), lit prompt rows [r0, r1), cols [c0, c1) of a 256 x 256 prompt, or None.
# Worked out by hand: prompt pixel p shows original coordinate (p + 0.5) / s with s = 256 / max(H, W);
# center_crop: the grid spans the central min(H, W) square; pad: the max(H, W) square centred on the image.
GEOMETRY = [
    # 100 x 200, s = 1.28. center_crop: view cols 50..150, cells 25 px -> 32 prompt px.
    ((100, 200), "center_crop", 4, (1, 2), (32, 64), (128, 160)),
    ((100, 200), "center_crop", 4, (0, 0), (0, 32), (64, 96)),
    ((100, 200), "center_crop", 4, (3, 3), (96, 128), (160, 192)),
    # pad: view rows -50..150, cells 50 px -> 64 prompt px; rows of cells 0 and 3 are outside the image.
    ((100, 200), "pad", 4, (1, 1), (0, 64), (64, 128)),
    ((100, 200), "pad", 4, (2, 3), (64, 128), (192, 256)),
    ((100, 200), "pad", 4, (0, 2), None, None),
    ((100, 200), "pad", 4, (3, 0), None, None),
    # 200 x 100 (portrait). center_crop: view rows 50..150.
    ((200, 100), "center_crop", 4, (1, 2), (96, 128), (64, 96)),
    ((200, 100), "center_crop", 4, (2, 0), (128, 160), (0, 32)),
    # pad: view cols -50..150.
    ((200, 100), "pad", 4, (1, 1), (64, 128), (0, 64)),
    ((200, 100), "pad", 4, (3, 2), (192, 256), (64, 128)),
    ((200, 100), "pad", 4, (2, 0), None, None),
    ((200, 100), "pad", 4, (1, 3), None, None),
    # square, s = 4: both views are the whole image; cells 16 px -> 64 prompt px.
    ((64, 64), "center_crop", 4, (2, 1), (128, 192), (64, 128)),
    ((64, 64), "pad", 4, (3, 0), (192, 256), (0, 64)),
    # 100 x 150, g = 16, s = 256 / 150: cell (3, 5) spans rows 18.75..25 -> 32..42.67 (pixels 32..42),
    # cols 25 + 31.25..37.5 -> 96..106.67 (pixels 96..106).
    ((100, 150), "center_crop", 16, (3, 5), (32, 43), (96, 107)),
]


@pytest.mark.parametrize("hw,view,g,cell,rows,cols", GEOMETRY)
def test_one_cell_lights_the_expected_block(hw, view, g, cell, rows, cols):
    cells = torch.zeros(1, g, g, dtype=torch.bool)
    cells[0, cell[0], cell[1]] = True
    out = to_mask_prompt(cells, [hw], view, size=256)
    assert out.shape == (1, 1, 256, 256) and out.dtype == torch.float32
    expected = torch.zeros(1, 1, 256, 256)
    if rows is not None:
        expected[0, 0, rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    assert torch.equal(out, expected)


# All cells on: exactly the part of the image inside the CLIP view lights; SAM's padding (bottom/right) stays off.
ALL_CELLS = [
    ((100, 200), "center_crop", (0, 128), (64, 192)),
    ((100, 200), "pad", (0, 128), (0, 256)),
    ((200, 100), "center_crop", (64, 192), (0, 128)),
    ((200, 100), "pad", (0, 256), (0, 128)),
    ((64, 64), "center_crop", (0, 256), (0, 256)),
    ((64, 64), "pad", (0, 256), (0, 256)),
]


@pytest.mark.parametrize("hw,view,rows,cols", ALL_CELLS)
def test_all_cells_light_the_view_inside_the_image_only(hw, view, rows, cols):
    out = to_mask_prompt(torch.ones(1, 16, 16, dtype=torch.bool), [hw], view, size=256)
    expected = torch.zeros(1, 1, 256, 256)
    expected[0, 0, rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    assert torch.equal(out, expected)


@pytest.mark.parametrize("view", ["center_crop", "pad"])
def test_padding_is_off_whatever_the_cells(view):
    gen = torch.Generator().manual_seed(5)
    cells = torch.rand(3, 8, 8, generator=gen) < 0.5
    hws = [(100, 200), (200, 100), (77, 130)]
    out = to_mask_prompt(cells, hws, view, size=256, on=1.0, off=0.0)
    for b, (h, w) in enumerate(hws):
        s = 256 / max(h, w)
        rh, rw = round(h * s), round(w * s)  # the image part of SAM's frame
        assert (out[b, 0, rh:] == 0).all() and (out[b, 0, :, rw:] == 0).all()


def test_custom_on_off_values():
    cells = torch.zeros(1, 4, 4, dtype=torch.bool)
    cells[0, 1, 2] = True
    out = to_mask_prompt(cells, [(100, 200)], "center_crop", size=256, on=2.5, off=-7.0)
    expected = torch.full((1, 1, 256, 256), -7.0)
    expected[0, 0, 32:64, 128:160] = 2.5
    assert torch.equal(out, expected)


def test_mask_prompt_other_size_and_batch():
    cells = torch.zeros(2, 4, 4, dtype=torch.bool)
    cells[0, 1, 2] = True
    cells[1, 1, 1] = True
    out = to_mask_prompt(cells, [(100, 200), (200, 100)], "pad", size=64)  # prompt pixels: a quarter of 256's
    assert out.shape == (2, 1, 64, 64)
    expected = torch.zeros(2, 1, 64, 64)
    expected[0, 0, 0:16, 32:48] = 1.0  # rows 0..50 -> 0..16 (s = 0.32), cols 100..150 -> 32..48
    expected[1, 0, 16:32, 0:16] = 1.0  # rows 50..100 -> 16..32, cols 0..50 (view starts at -50) -> 0..16
    assert torch.equal(out, expected)
    for b, hw in enumerate([(100, 200), (200, 100)]):
        assert torch.equal(out[b:b + 1], to_mask_prompt(cells[b:b + 1], [hw], "pad", size=64))


def test_mask_prompt_rejects_bad_input():
    cells = torch.zeros(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="clip_view"):
        to_mask_prompt(cells, [(10, 10)] * 2, "stretch")
    with pytest.raises(ValueError, match="image sizes"):
        to_mask_prompt(cells, [(10, 10)])


# ------------------------------------------------------------------------------------------------------------
# Eq. 12's perturbation
# ------------------------------------------------------------------------------------------------------------
def _topk_cells(b: int = 2, g: int = 8, k: int = 10, seed: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.rand(b, g, g, generator=torch.Generator().manual_seed(seed))
    return select_cells(scores, "topk", k=k), scores


def test_perturb_shapes_and_copy0():
    cells, scores = _topk_cells()
    out = perturb_cells(cells, scores, n=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 5, 8, 8) and out.dtype == torch.bool
    assert torch.equal(out[:, 0], cells)
    assert torch.equal(perturb_cells(cells, scores, n=1), cells[:, None])


def test_perturb_deterministic_for_seeded_generator():
    cells, scores = _topk_cells()
    a = perturb_cells(cells, scores, n=6, generator=torch.Generator().manual_seed(42))
    b = perturb_cells(cells, scores, n=6, generator=torch.Generator().manual_seed(42))
    c = perturb_cells(cells, scores, n=6, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not (a[:, 1:] == cells[:, None]).all()  # the default settings do perturb


def test_perturb_without_randomness_copies_the_input():
    cells, scores = _topk_cells()
    out = perturb_cells(cells, scores, n=4, flip_p=0.0, k_jitter=0, shift=False,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, cells[:, None].expand(-1, 4, -1, -1))


def test_perturb_flip_all_inverts():
    cells, scores = _topk_cells()
    out = perturb_cells(cells, scores, n=3, flip_p=1.0, k_jitter=0, shift=False)
    assert torch.equal(out[:, 0], cells)
    assert torch.equal(out[:, 1:], ~cells[:, None].expand(-1, 2, -1, -1))


def _shifted(cells: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """cells [g, g] moved by (dy, dx), zero-filled."""
    g = cells.shape[-1]
    out = torch.zeros_like(cells)
    out[max(dy, 0):g + min(dy, 0), max(dx, 0):g + min(dx, 0)] = cells[max(-dy, 0):g + min(-dy, 0),
                                                                       max(-dx, 0):g + min(-dx, 0)]
    return out


def test_perturb_shift_moves_by_at_most_one_cell():
    cells, scores = _topk_cells(g=6, k=8)
    out = perturb_cells(cells, scores, n=12, flip_p=0.0, k_jitter=0, shift=True,
                        generator=torch.Generator().manual_seed(1))
    moves = set()
    for b in range(2):
        shifts = {(dy, dx): _shifted(cells[b], dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
        for j in range(1, 12):
            hits = [d for d, s in shifts.items() if torch.equal(out[b, j], s)]
            assert hits, f"copy {j} of sample {b} is not a shift of the input by at most one cell"
            moves.update(hits)
    assert len(moves) > 1


def test_perturb_k_jitter_reselects_topk():
    cells, scores = _topk_cells(k=10)
    out = perturb_cells(cells, scores, n=10, flip_p=0.0, k_jitter=3, shift=False,
                        generator=torch.Generator().manual_seed(2))
    counts = set()
    for b in range(2):
        for j in range(10):
            k = int(out[b, j].sum())
            assert 7 <= k <= 13
            counts.add(k)
            assert torch.equal(out[b, j], select_cells(scores[b:b + 1], "topk", k=k)[0])
    assert len(counts) > 1


# ------------------------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------------------------
@PROPS
@given(b=st.integers(1, 3), n=st.integers(1, 300), d=st.integers(1, 6), g=st.integers(1, 8),
       data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_prop_shapes(b, n, d, g, data, seed):
    k = data.draw(st.integers(1, g * g))
    gen = torch.Generator().manual_seed(seed)
    states, seg = torch.randn(b, n, d, generator=gen), torch.randn(b, d, generator=gen)
    h = math.isqrt(n)
    assert token_map(normalize(similarity(states, seg))).shape == (b, h, math.ceil(n / h))
    cells, scores, sim = region_mask(states, seg, RVLS2MConfig(grid=g, k=k))
    assert cells.shape == scores.shape == (b, g, g) and cells.dtype == torch.bool and sim.shape == (b, n)
    assert not torch.isnan(scores).any() and (scores < 1e-9).all()  # log-probabilities (-inf: padding only)
    assert (cells.flatten(1).sum(-1) == k).all()
    prompt = to_mask_prompt(cells, [(37 + i, 91 - i) for i in range(b)], size=32)
    assert prompt.shape == (b, 1, 32, 32)


score_grids = st.integers(1, 6).flatmap(
    lambda g: st.tuples(st.just(g), st.lists(st.integers(-20, 20), min_size=2 * g * g, max_size=2 * g * g)))


@PROPS
@given(grid_values=score_grids, data=st.data())
def test_prop_topk_exactly_k_and_reference_order(grid_values, data):
    g, values = grid_values
    k = data.draw(st.integers(1, g * g))
    scores = torch.tensor(values, dtype=torch.float64).view(2, g, g)
    cells = select_cells(scores, "topk", k=k)
    assert (cells.flatten(1).sum(-1) == k).all()
    for b in range(2):
        flat = values[b * g * g:(b + 1) * g * g]
        ref = sorted(range(g * g), key=lambda i: (-flat[i], i))[:k]  # highest first, ties to the lower index
        assert sorted(cells[b].flatten().nonzero().flatten().tolist()) == sorted(ref)


TRANSFORMS = {
    "exp": torch.exp,
    "affine": lambda x: 2.5 * x + 7.0,
    "cube": lambda x: x**3,
    "tanh": lambda x: torch.tanh(x / 30),
}


@PROPS
@given(grid_values=score_grids, name=st.sampled_from(sorted(TRANSFORMS)), data=st.data())
def test_prop_topk_invariant_under_increasing_transform(grid_values, name, data):
    g, values = grid_values
    k = data.draw(st.integers(1, g * g))
    scores = torch.tensor(values, dtype=torch.float64).view(2, g, g)
    assert torch.equal(select_cells(scores, "topk", k=k), select_cells(TRANSFORMS[name](scores), "topk", k=k))


@PROPS
@given(h=st.integers(8, 400), w=st.integers(8, 400), g=st.sampled_from([2, 4, 8, 16]),
       size=st.sampled_from([64, 256]), seed=st.integers(0, 2**31 - 1))
def test_prop_cells_prompt_round_trip(h, w, g, size, seed):
    side = min(h, w)
    s = size / max(h, w)
    assume(side / g * s >= 2)  # each cell covers at least 2 x 2 prompt pixels
    cells = torch.rand(1, g, g, generator=torch.Generator().manual_seed(seed)) < 0.5
    prompt = to_mask_prompt(cells, [(h, w)], "center_crop", size=size, on=1.0, off=0.0)[0, 0]
    r0, c0 = (h - side) / 2, (w - side) / 2
    back = torch.zeros(g, g, dtype=torch.bool)
    for i in range(g):
        for j in range(g):
            y = math.floor((r0 + (i + 0.5) * side / g) * s)  # prompt pixel at the cell's centre
            x = math.floor((c0 + (j + 0.5) * side / g) * s)
            back[i, j] = prompt[y, x] == 1.0
    assert torch.equal(back, cells[0])
    # and the prompt lights nothing but selected cells: its area is close to theirs
    cell_px = (side / g * s) ** 2
    assert abs(float(prompt.sum()) - float(cells.sum()) * cell_px) <= float(cells.sum()) * (4 * side / g * s + 4)


# ------------------------------------------------------------------------------------------------------------
# Settings: impossible ones are refused when the config is built, before any model
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"k": 300}, r"rvls2m\.k=300 must be an integer between 1 and 256 \(rvls2m\.grid=16 has 16x16 cells\)"),
    ({"k": 0}, r"rvls2m\.k=0 .* between 1 and 256"),
    ({"grid": 4, "k": 17}, r"rvls2m\.k=17 .* between 1 and 16"),
    ({"k": 3.5}, r"rvls2m\.k=3\.5 must be an integer"),
    ({"grid": 0}, r"rvls2m\.grid=0 must be an integer >= 1"),
    ({"strategy": "best"}, r"rvls2m\.strategy='best': use one of topk, ratio, threshold"),
    ({"strategy": "ratio", "ratio": 0.0}, r"rvls2m\.ratio=0\.0 must be in \(0, 1\]"),
    ({"strategy": "threshold", "threshold": 1.5}, r"rvls2m\.threshold=1\.5 must be in \[0, 1\]"),
    ({"normalize": "l2"}, r"rvls2m\.normalize='l2': use one of softmax, minmax"),
])
def test_config_refuses_impossible_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        RVLS2MConfig(**kw)


def test_config_checks_only_what_the_strategy_uses():
    assert RVLS2MConfig(strategy="ratio", k=300).k == 300  # k is not used by ratio
    assert RVLS2MConfig(grid=1, k=1).grid == 1


def test_composed_train_and_eval_configs_with_k_beyond_g2_fail_before_any_model_is_built():
    from omegaconf import OmegaConf

    from sim4seg.config import compose
    from sim4seg.model.builder import build_model

    for name, overrides in (("train", ["rvls2m.k=300", "rvls2m.grid=16"]),
                            ("eval", ["rvls2m=paper", "rvls2m.k=300", "rvls2m.grid=16"])):
        rv = compose(name, overrides).rvls2m
        with pytest.raises(ValueError, match=r"rvls2m\.k=300 .* between 1 and 256"):
            RVLS2MConfig(**OmegaConf.to_container(rv))
        # The builder checks first: a model whose weights do not exist is never reached.
        missing = OmegaConf.create({"lvlm": {"kind": "pretrained", "path": "/nonexistent/lvlm"}})
        with pytest.raises(ValueError, match=r"rvls2m\.k=300"):
            build_model(missing, rv)


def test_train_entry_point_refuses_k_beyond_g2_in_one_line(tmp_path):
    env = child_env()
    r = subprocess.run([sys.executable, "-m", "sim4seg.train", "rvls2m.k=300", "rvls2m.grid=16",
                        f"train.output_dir={tmp_path / 'run'}", "wandb.mode=disabled", "train.progress=false"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "rvls2m.k=300 must be an integer between 1 and 256" in last, last
    assert not (tmp_path / "run" / "checkpoints").exists()
