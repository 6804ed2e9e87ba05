"""Test-time scaling: deployable selection ignores paths without [SEG]; the m=1 point of a sweep is the greedy
answer; every draw is seeded per sample, so TTS rows do not depend on batch_size."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import QUICK_TRAIN, compose_cfg
from transformers import LogitsProcessor, LogitsProcessorList

from sim4seg.data.synthetic import write_synthetic
from sim4seg.evaluation import evaluate
from sim4seg.evaluation.tts import select_mask
from sim4seg.model.sim4seg import Sim4Seg
from sim4seg.training import train


def square(y: int, x: int, side: int = 4, size: int = 16) -> torch.Tensor:
    m = torch.zeros((size, size), dtype=torch.bool)
    m[y:y + side, x:x + side] = True
    return m


def test_consensus_ignores_empty_candidates_of_paths_without_seg():
    """The issue's case: 2 paths x 2 perturbations; path 0 said no [SEG] (two empty masks, which agree with
    each other perfectly), path 1's two real masks overlap partly. Consensus must pick a real mask."""
    empty = torch.zeros((16, 16), dtype=torch.bool)
    real_a, real_b = square(2, 2), square(3, 3)  # IoU 9/23
    masks = torch.stack([empty, empty, real_a, real_b])
    has_seg = torch.tensor([False, False, True, True])
    sam_iou = torch.tensor([0.0, 0.0, -0.2, -0.1])  # SAM's IoU head can go below the zeros of the empty ones
    assert select_mask(masks, "consensus", sam_iou) in (0, 1)  # without the rule: the empty ones win
    assert select_mask(masks, "consensus", sam_iou, has_seg=has_seg) in (2, 3)
    assert select_mask(masks, "sam_score", sam_iou, has_seg=has_seg) == 3
    # no path has [SEG]: nothing to exclude, the empty masks are all there is
    assert select_mask(masks[:2], "consensus", sam_iou[:2], has_seg=has_seg[:2]) in (0, 1)
    # one usable candidate: it is the choice, whatever the others agree on
    assert select_mask(masks[:3], "consensus", sam_iou[:3], has_seg=has_seg[:3]) == 2
    # the oracle still sees every candidate (an empty mask can be the closest to an empty ground truth)
    assert select_mask(masks, "oracle", sam_iou, empty, has_seg=has_seg) == 0


class SegAtStepOne(LogitsProcessor):
    """Step 0 free (greedy or sampled), [SEG] at step 1, EOS at step 3: the [SEG] state follows the step-0
    token, so a sampled path 0 would give another mask than the greedy answer."""

    def __init__(self, seg_id: int, eos_id: int, prompt_len: int):
        self.seg_id, self.eos_id, self.prompt_len = seg_id, eos_id, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        if step in (1, 3):
            forced = torch.full_like(scores, -1e9)
            forced[:, self.seg_id if step == 1 else self.eos_id] = 0
            return forced
        scores[:, [self.seg_id, self.eos_id]] = -1e9
        return scores


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("tts")
    data = write_synthetic(base / "data", n=30, seed=5, progress=False)
    run = base / "run"
    train(compose_cfg("train", [*QUICK_TRAIN, f"data.root={data}", f"train.output_dir={run}", "train.max_steps=1",
                                "data.answer_format=diagnosis"]))
    return data, run


@pytest.fixture
def seg_at_step_one(monkeypatch):
    original = Sim4Seg.generate

    def generate(self, batch, *a, **kw):
        proc = SegAtStepOne(self.seg_token_id, kw["eos_token_id"], batch["input_ids"].shape[1])
        kw["logits_processor"] = LogitsProcessorList([proc, *(kw.get("logits_processor") or [])])
        return original(self, batch, *a, **kw)

    monkeypatch.setattr(Sim4Seg, "generate", generate)


@pytest.fixture
def region_following_decoder(monkeypatch):
    """The tiny random mask decoder barely responds to its dense prompt, so perturbed region masks would all
    decode to the same mask: add the region itself to the logits, as a trained decoder follows it."""
    from sim4seg.model.rvls2m import to_mask_prompt

    original = Sim4Seg.decode

    def decode(self, image_embedding, seg_embeds, cells, resize_hw, orig_hw):
        logits, iou = original(self, image_embedding, seg_embeds, cells, resize_hw, orig_hw)
        if cells is not None and cells.shape[0]:
            h, w = orig_hw
            region = to_mask_prompt(cells, [tuple(orig_hw)] * cells.shape[0], self.clip_view, size=max(h, w))
            region = region[:, 0, :h, :w].to(logits.device)
            logits, iou = logits + 50 * (region - 0.5), iou + region.mean((1, 2))
        return logits, iou

    monkeypatch.setattr(Sim4Seg, "decode", decode)


def ev(data, run, out, *extra) -> list[dict]:
    evaluate(compose_cfg("eval", [f"ckpt={run}", f"data.root={data}", f"out={out}", "max_new_tokens=5",
                                  "progress=false", "overlays_per_subset=0", "tts.temperature=5", *extra]))
    return sorted((json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()), key=lambda r: r["id"])


def test_m1_point_of_a_sweep_is_the_greedy_answer(setup, tmp_path, seg_at_step_one):
    data, run = setup
    plain = {r["id"]: r for r in ev(data, run, tmp_path / "plain", "batch_size=4")}
    sweep = ev(data, run, tmp_path / "sweep", "tts.m=[1,3]", "batch_size=4")
    for r in sweep:
        one = r["tts"]["m=1,n=1"]
        assert (one["inter"], one["union"], one["correct"]) == (plain[r["id"]]["inter"], plain[r["id"]]["union"],
                                                                 plain[r["id"]]["correct"])
    # the sampled paths are real samples: at m=3 some chosen mask differs from the greedy one
    assert any(r["tts"]["m=3,n=1"]["oracle"]["inter"] != r["tts"]["m=1,n=1"]["inter"] for r in sweep)


def test_tts_rows_do_not_depend_on_batch_size(setup, tmp_path, seg_at_step_one, region_following_decoder):
    data, run = setup
    tts = ["tts.m=[1,3]", "tts.n=[1,3]", "tts.flip_p=0.3", "tts.k_jitter=6", "max_samples=7"]
    one = ev(data, run, tmp_path / "b1", "batch_size=1", *tts)
    three = ev(data, run, tmp_path / "b3", "batch_size=3", *tts)
    for r in one + three:  # Eq. 4's spread is a float statistic: batched matmuls round its last bits differently
        r["sim_std"] = [round(x, 4) for x in r.get("sim_std", [])]
    assert len(one) == 7 and one == three
    # the perturbations are real: some sample's oracle finds a better mask among them than copy 0
    assert any(r["tts"]["m=1,n=3"]["oracle"]["inter"] != r["tts"]["m=1,n=1"]["oracle"]["inter"] for r in one)
