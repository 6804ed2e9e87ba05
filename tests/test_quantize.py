"""``model.quantization`` (issue 14.5) on the CPU with bitsandbytes, through the builder: a tiny pretrained LLaVA
loaded in NF4 or int8 keeps the [SEG] path (phi, SAM, lm_head and the vision side are not quantised: masks finite,
not blank and close to the full-precision model's; LISA #174 reported blank masks under 4-bit), QLoRA trains its
LoRA on the 4-bit base through the training loop (DeepSpeed) and the run reloads, and impossible settings are one
line."""

from __future__ import annotations

import pytest
import torch
from conftest import make_samples
from safetensors.torch import load_file

from sim4seg.config import compose
from sim4seg.errors import UserError
from sim4seg.model.builder import build_model
from sim4seg.model.quantize import load_kwargs

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The tiny preset's LVLM saved as a local pretrained directory; the full-precision model loaded from it, its
    processor, and the overrides that load it."""
    torch.manual_seed(0)
    model, proc = build_model(compose("train", ["model=tiny"]).model)
    path = tmp_path_factory.mktemp("lvlm") / "tiny_llava"
    model.lvlm.merge_and_unload().save_pretrained(path)
    proc.tokenizer.save_pretrained(path)
    overrides = ["model=tiny", "model.lvlm.kind=pretrained", f"model.lvlm.path={path}"]
    full, proc = build_model(compose("train", overrides).model)
    return full.eval(), proc, overrides


def quantised(pretrained, how: str):
    full, _, overrides = pretrained
    q, _ = build_model(compose("train", [*overrides, f"model.quantization={how}"]).model)
    q.text_hidden_fcs.load_state_dict(full.text_hidden_fcs.state_dict())  # random-init parts as the reference's
    q.sam.load_state_dict(full.sam.state_dict())
    return q.eval()


@pytest.mark.parametrize("how", ["nf4", "int8"])
def test_quantised_lvlm_keeps_the_seg_mask_path(pretrained, how):
    full, proc, _ = pretrained
    q = quantised(pretrained, how)
    linear = {n: type(m).__name__ for n, m in q.lvlm.named_modules() if "Linear" in type(m).__name__}
    lm = [t for n, t in linear.items() if ".language_model.layers." in n and "lora" not in n and "base_layer" in n]
    assert lm and set(lm) == {"Linear4bit" if how == "nf4" else "Linear8bitLt"}
    kept = [t for n, t in linear.items() if "vision_tower" in n or "multi_modal_projector" in n or "lm_head" in n]
    assert kept and set(kept) == {"Linear"}  # not quantised
    batch = proc.collate(make_samples(proc, 2, "It is [SEG]."))
    with torch.no_grad():
        ref, low = full(batch).masks, q(batch).masks
    for f, lo in zip(ref, low):
        assert torch.isfinite(lo.logits).all() and lo.logits.std() > 0
        a, b = f.logits > 0, lo.logits > 0
        assert b.any() and (a & b).sum() / (a | b).sum() > 0.9  # the same mask up to quantisation error


@pytest.mark.slow
def test_qlora_trains_lora_on_the_4bit_base_and_the_run_reloads(pretrained, tmp_path):
    from sim4seg.data.synthetic import write_synthetic
    from sim4seg.model.checkpoint import load_run
    from sim4seg.training import train

    _, proc, overrides = pretrained
    data = write_synthetic(tmp_path / "data", n=8, seed=0, progress=False)
    run = tmp_path / "run"
    train(compose("train", [*overrides, "model.quantization=nf4", f"data.root={data}", f"train.output_dir={run}",
                            "train.max_steps=3", "train.micro_batch=2", "train.grad_accum=1", "train.warmup_steps=1",
                            "train.eval_every=0", "train.save_every=0", "train.progress=false", "wandb.mode=disabled"]))
    trained = load_file(str(run / "trainable.safetensors"))
    lora_b = [v for k, v in trained.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # steps 2-3 (lr > 0) moved the adapters
    assert not any(".language_model.layers." in k and "lora_" not in k for k in trained)  # the 4-bit base stays
    model, _, _ = load_run(run)
    with torch.no_grad():
        masks = model.eval()(proc.collate(make_samples(proc, 2, "It is [SEG]."))).masks
    assert all(torch.isfinite(d.logits).all() and (d.logits > 0).any() for d in masks)


@pytest.mark.parametrize("change,message", [
    (["model.quantization=nf2"], "model.quantization='nf2': use null, nf4 or int8"),
    (["model.lvlm.kind=random"], "model.lvlm.kind='random' has none"),
    (["model.trainable=[language_model,lm_head]"], "model.trainable='language_model' would train the quantised"),
])
def test_impossible_settings_are_one_line(pretrained, change, message):
    cfg = compose("train", [*pretrained[2], "model.quantization=nf4", *change]).model
    with pytest.raises(UserError) as e:
        load_kwargs(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert load_kwargs(compose("train", ["model=tiny"]).model) == {}  # null: nothing changes
