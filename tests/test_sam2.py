"""SAM2 as Sim4Seg's second decoder family (issue 14.3): Meta's release layout reproduced numerically, one-line
refusals of wrong checkpoints before anything is built, the Sim4Seg module with tiny_sam2 (shapes, the trainable set,
encoder LoRA), the embedding cache, TTS's batched decode, the stretch frame's geometry, and train -> eval -> predict
through the entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import child_env, make_samples
from omegaconf import OmegaConf
from safetensors.torch import load_file

from sim4seg.config import compose
from sim4seg.errors import UserError
from sim4seg.model import rvls2m, sam2
from sim4seg.model.builder import build_model
from sim4seg.model.embedding_cache import EmbeddingCache, training_cache
from sim4seg.model.frames import stretch_image, stretch_mask_prompt
from sim4seg.model.sam import build_sam
from sim4seg.model.sam2_names import from_meta

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "sam2_meta_tiny.safetensors"  # written by scripts/sam2_fixture.py (Meta's code)
ENV = child_env() | {"PYTHONWARNINGS": "ignore"}
QUERY = "Please segment the lesion."


@pytest.fixture(scope="module")
def tiny_sam2():
    torch.manual_seed(0)
    return build_model(compose("train", ["model=tiny_sam2"]).model)


def batch_of(proc, n: int = 2, answer: str | None = "It is [SEG].", left_pad: bool = False) -> dict:
    return proc.collate(make_samples(proc, n, answer), left_pad=left_pad)


def test_release_layout_reproduces_metas_outputs():
    """A tiny SAM2 in Meta's checkpoint layout (video parts included) loads strictly through the rename table and
    gives Meta's own low-res masks, IoU and upsampled masks (tests/data, computed by Meta's code). Fails if any
    rename, the point-table stacking or the packing of the high-resolution maps is wrong."""
    data = load_file(str(FIXTURE))
    meta = {k[5:]: v.float() / 32 for k, v in data.items() if k.startswith("meta.")}
    ref = {k[4:]: v for k, v in data.items() if k.startswith("ref.")}
    vision, prompt, decoder = sam2._configs({**sam2.TINY, "width": 8}, 128, 16, 16, 2048, 8)
    decoder.iou_head_hidden_dim = 256  # Meta's builder fixes it
    model = sam2.Sam2(sam2.Sam2ImageEncoder(vision, 128), sam2.Sam2Prompts(prompt), sam2.Sam2Decoder(decoder))
    sam2._load(model, from_meta(meta), "fixture")  # strict: every key renamed, video-only keys dropped
    model.eval()
    frame, hw = stretch_image(ref["image"].numpy(), 128, model.pixel_mean.flatten().tolist(),
                              model.pixel_std.flatten().tolist())
    with torch.no_grad():
        packed = model.image_encoder(frame[None])
        sparse, dense = model.prompt_encoder(masks=ref["mask_prompt"][None])
        for multi in (0, 1):
            low, iou = model.mask_decoder(image_embeddings=packed, image_pe=model.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=torch.cat([sparse, ref["seg"][None]], 1),
                                          dense_prompt_embeddings=dense, multimask_output=bool(multi))
            torch.testing.assert_close(low[0], ref[f"low_res_{multi}"], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(iou[0], ref[f"iou_{multi}"], atol=1e-4, rtol=1e-4)
            if not multi:
                masks = model.postprocess_masks(low, hw, tuple(ref["image"].shape[:2]))
                torch.testing.assert_close(masks[0], ref["masks"], atol=1e-4, rtol=1e-4)
    assert packed.shape == (1, 4 * 16, 8, 8) and hw == (128, 128)


def test_pack_is_lossless():
    top, s1, s0 = torch.randn(2, 32, 8, 8), torch.randn(2, 8, 16, 16), torch.randn(2, 4, 32, 32)
    for a, b in zip(sam2.unpack(sam2.pack(top, s1, s0), 32), (top, s1, s0)):
        assert torch.equal(a, b)


def _fake_release(path: Path, width: int, blocks: int) -> Path:
    state = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(width, 3, 7, 7),
             **{f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(blocks)}}
    torch.save({"model": state}, path)
    return path


@pytest.mark.parametrize("case", ["other_size", "not_sam2", "missing"])
def test_wrong_checkpoint_is_one_line_before_anything_is_built(case, tmp_path, monkeypatch):
    monkeypatch.setattr(sam2, "_assemble", lambda *a, **k: pytest.fail("built before the checkpoint was checked"))
    if case == "other_size":
        path, want = _fake_release(tmp_path / "sam2.1_hiera_large.pt", 144, 48), "is SAM2 sam2_hiera_l (Hiera width 144"
    elif case == "not_sam2":
        path, want = tmp_path / "sam_vit_b.pth", "holds no SAM2 Hiera image encoder"
        torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, path)
    else:
        path, want = tmp_path / "nothing.pt", "does not exist"
    with pytest.raises(UserError) as e:
        build_sam(OmegaConf.create({"kind": "sam2_hiera_t", "checkpoint": str(path)}))
    msg = str(e.value)
    assert want in msg and "model.sam.checkpoint" in msg and "\n" not in msg
    if case != "missing":
        assert "sam2_hiera_t, sam2_hiera_s, sam2_hiera_b+, sam2_hiera_l" in msg


def test_forward_shapes_and_gradients_reach_only_the_trainable_set(tiny_sam2):
    model, proc = tiny_sam2
    model.train()
    batch = batch_of(proc)
    assert batch["sam_images"].shape == (2, 3, 128, 128) and batch["resize_hw"][0] == (128, 128)  # stretch frame
    model.zero_grad()
    out = model(batch)
    out.losses["total"].backward()
    for d, (h, w) in zip(out.masks, batch["orig_hw"]):
        assert d.logits.shape == (1, h, w) and d.iou.shape == (1,) and d.cells.shape == (1, 16, 16)
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads <= trainable
    for key in ("lora_B", "lm_head", "text_hidden_fcs", "sam.mask_decoder.transformer", "sam.mask_decoder.upscale_conv2",
                "sam.mask_decoder.output_hypernetworks_mlps.0", "sam.mask_decoder.mask_tokens"):
        assert any(key in n for n in grads), key
    assert not any(n.startswith(("sam.image_encoder", "sam.prompt_encoder")) for n in trainable)
    model.zero_grad()
    model.eval()


def test_encoder_lora_trains_the_image_side_and_turns_the_cache_off(tmp_path, capsys):
    model, proc = build_model(compose("train", ["model=tiny_sam2", "model.sam.train_encoder=true"]).model)
    lora = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("sam.image_encoder")]
    assert lora and all("lora_" in n for n in lora) and any("conv_s0" in n for n in lora)
    model.train()
    model(batch_of(proc)).losses["total"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in lora and "lora_B" in n)
    assert training_cache(tmp_path, model.sam.image_encoder) is None
    assert "SAM embedding cache off: the image encoder trains" in capsys.readouterr().out


def test_embedding_cache_round_trips_and_decodes_identically(tiny_sam2, tmp_path):
    model, proc = tiny_sam2
    batch = batch_of(proc)
    with torch.no_grad():
        direct = model.encode_images(batch["sam_images"])
        cache = EmbeddingCache(tmp_path, model.sam.image_encoder)
        first, second = cache(batch["sam_images"]), cache(batch["sam_images"])
        assert (cache.misses, cache.hits) == (2, 2) and direct.shape == (2, 128, 8, 8)
        assert torch.equal(first, direct) and torch.equal(second, direct)
        model.eval()
        uncached = model(batch).masks
        cached = model({**{k: v for k, v in batch.items() if k != "sam_images"}, "sam_embeddings": second}).masks
    for a, b in zip(uncached, cached):
        assert torch.equal(a.logits, b.logits) and torch.equal(a.iou, b.iou)


def test_n_perturbed_prompts_in_one_decoder_batch_equal_n_separate_decodes(tiny_sam2):
    model, proc = tiny_sam2
    model.eval()
    batch = batch_of(proc, 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        emb = model.encode_images(batch["sam_images"])[0]
        seg = torch.randn(1, model.text_hidden_fcs[-1].out_features, generator=g)
        scores = torch.randn(1, 16, 16, generator=g)
        cells = rvls2m.perturb_cells(rvls2m.select_cells(scores, k=36), scores, n=5, generator=g)[0]  # [5, 16, 16]
        hw = (batch["resize_hw"][0], batch["orig_hw"][0])
        together, iou = model.decode(emb, seg.expand(5, -1), cells, *hw)
        for j in range(5):
            alone, iou_j = model.decode(emb, seg, cells[j:j + 1], *hw)
            torch.testing.assert_close(together[j:j + 1], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[j:j + 1], iou_j, atol=1e-6, rtol=1e-6)
    assert len({together[j].sum().item() for j in range(5)}) > 1  # the perturbations reach the masks


@pytest.mark.parametrize("hw", [(64, 64), (40, 100), (100, 40), (37, 53)])
@pytest.mark.parametrize("view", ["center_crop", "pad"])
def test_stretch_prompt_puts_each_cell_on_its_image_region(hw, view):
    """Each prompt pixel of a selected cell shows an image point inside that cell's region of the LVLM's view; for
    a square image the stretch frame is SAM's letterbox frame."""
    h, w = hw
    g, size = 4, 64
    side = min(h, w) if view == "center_crop" else max(h, w)
    for k in range(g * g):
        cells = torch.zeros(1, g, g, dtype=torch.bool)
        cells.view(-1)[k] = True
        prompt = stretch_mask_prompt(cells, [hw], view, size)[0, 0]
        r, c = divmod(k, g)
        top, left = (h - side) / 2 + r * side / g, (w - side) / 2 + c * side / g
        ys, xs = prompt.nonzero(as_tuple=True)
        y, x = (ys.double() + 0.5) * h / size, (xs.double() + 0.5) * w / size
        assert ((y >= top) & (y < top + side / g) & (x >= left) & (x < left + side / g)).all()
        if h == w:
            assert torch.equal(prompt, rvls2m.to_mask_prompt(cells, [hw], view, size)[0, 0])
    whole = stretch_mask_prompt(torch.ones(1, g, g, dtype=torch.bool), [hw], view, size)[0, 0]
    assert whole.all() if view == "pad" else whole.any()


def test_stretch_frame_fills_the_frame_and_masks_return_to_the_image(tiny_sam2):
    image = np.zeros((30, 90, 3), dtype=np.uint8)
    image[:, 60:] = 255  # the right third is white
    x, hw = stretch_image(image, 96, [0.0] * 3, [255.0] * 3)
    assert hw == (96, 96) and x[:, :, 70:].min() > 0.99 and x[:, :, :58].max() < 0.01  # no padding, aspect not kept
    low = (x[:1, None, ::4, ::4] * 20 - 10)  # a 24 x 24 "mask" of the white part
    back = tiny_sam2[0].sam.postprocess_masks(low, hw, (30, 90))[0, 0] > 0
    assert back[:, 62:].all() and not back[:, :58].any()


@pytest.mark.slow
def test_train_eval_predict_through_the_entry_points(tmp_path):
    """Issue 14's Done-when with the SAM2 family: 2 training steps of model=tiny model.sam.kind=tiny_sam2, then
    `python -m sim4seg.eval ... mode=generate` and `sim4seg predict` on the run."""
    from sim4seg.data.synthetic import write_synthetic

    data = write_synthetic(tmp_path / "data", n=8, seed=0, progress=False)
    run = tmp_path / "run"

    def call(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    call("sim4seg.train", "model=tiny", "model.sam.kind=tiny_sam2", f"data.root={data}", f"train.output_dir={run}",
         "train.max_steps=2", "train.micro_batch=2", "train.grad_accum=1", "train.warmup_steps=1",
         "train.eval_every=0", "train.save_every=0", "train.progress=false", "wandb.mode=disabled")
    call("sim4seg.eval", f"ckpt={run}", f"data.root={data}", "split=test", "mode=generate", f"out={tmp_path / 'ev'}",
         "max_samples=2", "max_new_tokens=8", "progress=false")
    assert (tmp_path / "ev" / "metrics.json").exists()
    image = next(iter(sorted((data / "images").rglob("*.png"))))
    r = call("sim4seg.cli", "predict", "--ckpt", str(run), "--image", str(image), "--query", QUERY,
             "--out", str(tmp_path / "pred"), "--max-new-tokens", "8")
    assert (tmp_path / "pred").is_dir() and r.stdout.strip()


@pytest.mark.slow
def test_export_of_a_lora_trained_encoder_reloads_with_identical_outputs(tmp_path, capsys):
    """model=tiny_sam2 with the image encoder's LoRA trained (3 steps: the warm-up schedule's first two have
    learning rate 0) while the SAM embedding cache was asked for (it is turned off with a log line), then exported:
    the export's outputs equal the run's (up to the LVLM's LoRA merge), the encoder's trained adapters included."""
    from sim4seg.data.synthetic import write_synthetic
    from sim4seg.model.checkpoint import load_run
    from sim4seg.model.export import export
    from sim4seg.training import train

    data = write_synthetic(tmp_path / "data", n=8, seed=0, progress=False)
    run, cache = tmp_path / "run", tmp_path / "cache"
    train(compose("train", ["model=tiny_sam2", "model.sam.train_encoder=true", f"data.root={data}",
                            f"train.output_dir={run}", "train.max_steps=3", "train.micro_batch=2", "train.grad_accum=1",
                            "train.warmup_steps=1", "train.eval_every=0", "train.save_every=0", "train.progress=false",
                            "wandb.mode=disabled", "train.cache_sam_embeddings=true", f"train.cache_dir={cache}"]))
    assert "SAM embedding cache off: the image encoder trains" in capsys.readouterr().out and not cache.exists()
    export(run, tmp_path / "export")
    (trained, proc, _), (exported, _, _) = load_run(run), load_run(tmp_path / "export")
    lora_b = [p for n, p in exported.named_parameters() if n.startswith("sam.image_encoder") and "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # training moved the adapters; the export kept them
    batch = proc.collate(make_samples(proc, 2, "It is [SEG]."))
    with torch.no_grad():
        for a, b in zip(trained.eval()(batch).masks, exported.eval()(batch).masks):
            torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)  # the LVLM's LoRA is merged
