"""Region diagnostics (does RVLS2M point at the lesion?), hand-computed on small images with g = 2 and g = 4."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sim4seg.metrics import cells_in_image, region_diagnostics, summarize_regions
from sim4seg.model.rvls2m import to_mask_prompt


def grid(*on: tuple[int, int], g: int = 2) -> torch.Tensor:
    c = torch.zeros(g, g, dtype=torch.bool)
    for r, k in on:
        c[r, k] = True
    return c


def box(r0: int, r1: int, c0: int, c1: int, hw: tuple[int, int]) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_center_crop_cells_cover_the_central_square_only() -> None:
    # H=4, W=8: the view is columns 2..5; with g=2 each cell is 2x2 pixels; columns 0, 1, 6, 7 are in no cell.
    assert cells_in_image(grid((0, 0)), (4, 8)).tolist() == box(0, 2, 2, 4, (4, 8)).tolist()
    assert cells_in_image(grid((1, 1)), (4, 8)).tolist() == box(2, 4, 4, 6, (4, 8)).tolist()
    assert cells_in_image(torch.ones(2, 2, dtype=torch.bool), (4, 8)).sum() == 16


def test_pad_cells_span_the_padded_square() -> None:
    # H=4, W=8, pad: an 8x8 square with the image in rows 2..5; cell (0, 0) shows image rows 0-1, cols 0-3.
    assert cells_in_image(grid((0, 0)), (4, 8), "pad").tolist() == box(0, 2, 0, 4, (4, 8)).tolist()
    assert cells_in_image(grid((1, 1)), (4, 8), "pad").tolist() == box(2, 4, 4, 8, (4, 8)).tolist()


def test_it_is_the_models_geometry() -> None:
    # Same cells as SAM's prompt frame at 2x scale (longest side 32), where each image pixel is a 2x2 block
    # (cell edges fall on whole pixels for an 8x16 image with g=4).
    cells = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    for view in ("center_crop", "pad"):
        frame = to_mask_prompt(cells[None], [(8, 16)], view, size=32)[0, 0, :16, :32] > 0.5
        assert np.array_equal(cells_in_image(cells, (8, 16), view), frame[::2, ::2].numpy())


def test_precision_recall_pointing_center_crop() -> None:
    # Selected: cells (0,0) = rows 0-1 cols 2-3 and (1,1) = rows 2-3 cols 4-5 (8 px). Target: cols 0-3 (16 px).
    # Inside: 4 px -> precision 4/8, recall 4/16. Top cell (1,1): centre pixel (2, 4), outside the target.
    target = box(0, 4, 0, 4, (4, 8))
    scores = torch.tensor([[0.5, 0.1], [0.2, 0.9]])
    d = region_diagnostics(grid((0, 0), (1, 1)), scores, target)
    assert d == {"region_precision": 0.5, "region_recall": 0.25, "pointing": 0.0}
    # Top cell (0,0): centre pixel (0, 2), inside.
    assert region_diagnostics(grid((0, 0), (1, 1)), scores.flip(0, 1), target)["pointing"] == 1.0


def test_ties_point_with_the_lower_flat_index() -> None:
    target = box(0, 2, 2, 4, (4, 8))  # exactly cell (0, 0)
    d = region_diagnostics(grid((0, 0)), torch.zeros(2, 2), target)
    assert d == {"region_precision": 1.0, "region_recall": 1.0, "pointing": 1.0}


def test_pad_view_precision_recall_pointing() -> None:
    # Cell (0,0) = rows 0-1, cols 0-3 (8 px); target rows 1-3, cols 0-1 (6 px); inside: row 1, cols 0-1 (2 px).
    # Its centre pixel (0, 1) is not in the target.
    target = box(1, 4, 0, 2, (4, 8))
    d = region_diagnostics(grid((0, 0)), torch.tensor([[1.0, 0.0], [0.0, 0.0]]), target, "pad")
    assert d["region_precision"] == pytest.approx(2 / 8)
    assert d["region_recall"] == pytest.approx(2 / 6)
    assert d["pointing"] == 0.0


def test_cells_in_the_padding_show_nothing_and_miss() -> None:
    # H=8, W=2 with pad and g=4: columns 0 and 3 of the grid lie in the padding.
    target = np.ones((8, 2), bool)
    scores = torch.zeros(4, 4)
    scores[0, 0] = 1.0
    d = region_diagnostics(grid((0, 0), (3, 3), g=4), scores, target, "pad")
    assert d == {"region_precision": 0.0, "region_recall": 0.0, "pointing": 0.0}


def test_log_scores_with_minus_infinity_rank_like_top_k() -> None:
    scores = torch.full((2, 2), -math.inf, dtype=torch.float64)
    scores[1, 0] = -3.0
    target = box(2, 4, 2, 4, (4, 8))  # cell (1, 0)
    assert region_diagnostics(grid((1, 0)), scores, target)["pointing"] == 1.0


def test_empty_target_is_refused_and_summary_averages() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        region_diagnostics(grid((0, 0)), torch.zeros(2, 2), np.zeros((4, 8), bool))
    rows = [{"region_precision": 0.5, "region_recall": 1.0, "pointing": 1.0},
            {"region_precision": 0.0, "region_recall": 0.5, "pointing": 0.0}]
    assert summarize_regions(rows) == {"region_precision": 0.25, "region_recall": 0.75, "pointing": 0.5}
    assert all(math.isnan(v) for v in summarize_regions([]).values())


# ---------------------------------------------------------------------------------------------------------------
# the region loss (ours, loss.region): its target distribution and value, by hand


def test_cell_coverage_in_the_models_geometry() -> None:
    from sim4seg.model.losses import cell_coverage

    # H=4, W=8, center crop, g=2: cells are 2x2 blocks of columns 2..5. Target: columns 0..2 -> cell (r, 0)
    # covers columns 2-3, half inside; cell (r, 1) (columns 4-5) none.
    target = torch.from_numpy(box(0, 4, 0, 3, (4, 8)))[None]
    cov = cell_coverage(target, (4, 8), 2, "center_crop")
    assert cov.shape == (1, 2, 2)
    assert torch.allclose(cov[0], torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    # pad: the 8x8 square, image rows 2..5 of it; cell (0, 0) shows image rows 0-1, columns 0-3 (3 of 4 columns in)
    cov = cell_coverage(target, (4, 8), 2, "pad")
    assert torch.allclose(cov[0], torch.tensor([[0.75, 0.0], [0.75, 0.0]]))


def test_region_loss_by_hand_and_its_gradient() -> None:
    from sim4seg.model.losses import region_loss

    target = torch.from_numpy(box(0, 4, 0, 3, (4, 8)))[None]  # coverage [[.5, 0], [.5, 0]] -> q = [.5, 0, .5, 0]
    flat = torch.zeros(1, 2, 2, requires_grad=True)  # uniform cells: P = 1/4 each
    loss = region_loss([flat], [target], [(4, 8)], "center_crop")
    assert loss.item() == pytest.approx(math.log(4))
    loss.backward()  # d/dx of -sum q log softmax(x) = softmax(x) - q
    assert torch.allclose(flat.grad[0], torch.tensor([[0.25 - 0.5, 0.25], [0.25 - 0.5, 0.25]]))
    on = torch.tensor([[[2.0, 0.0], [2.0, 0.0]]])  # mass on the target's cells lowers it
    assert region_loss([on], [target], [(4, 8)], "center_crop").item() < math.log(4)
    # no [SEG] (a negative) or an empty target: nothing to learn, zero
    assert region_loss([torch.zeros(0, 2, 2)], [torch.zeros(0, 4, 8)], [(4, 8)], "center_crop").item() == 0.0
    assert region_loss([flat], [torch.zeros(1, 4, 8)], [(4, 8)], "center_crop").item() == 0.0


def test_forward_adds_the_region_term_only_when_asked(fresh_model, make_batch) -> None:
    from dataclasses import replace

    batch = make_batch(2)
    off = fresh_model(batch).losses
    assert "region" not in off  # the paper's objective, unchanged
    fresh_model.loss_weights = replace(fresh_model.loss_weights, region=2.0)
    on = fresh_model(batch).losses
    assert torch.allclose(on["total"], off["total"] + 2.0 * on["region"])
    assert 0 < on["region"].item() < 2 * math.log(16 * 16)  # near log(g^2) for a random similarity map
    on["region"].backward()  # it trains phi (and the LVLM states behind it)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fresh_model.text_hidden_fcs.parameters())
