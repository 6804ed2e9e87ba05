"""``model.quantization`` (issue 14.5) on the CPU with bitsandbytes: a tiny pretrained LLaVA loaded in NF4 or int8
keeps the [SEG] path (phi, SAM and lm_head are not quantised: masks finite, not blank, and close to the
full-precision model's; LISA #174 reported blank masks under 4-bit), QLoRA's LoRA trains on the 4-bit base, and
impossible settings are one line."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_samples
from omegaconf import OmegaConf

from sim4seg.config import compose
from sim4seg.errors import UserError
from sim4seg.model.builder import build_model
from sim4seg.model.quantize import load_kwargs
from sim4seg.model.sim4seg import Sim4Seg

pytest.importorskip("bitsandbytes")
from transformers import LlavaForConditionalGeneration  # noqa: E402


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The tiny model (full precision), its LVLM saved as a local pretrained directory, and the model config that
    loads that directory."""
    torch.manual_seed(0)
    model, proc = build_model(compose("train", ["model=tiny"]).model)
    path = tmp_path_factory.mktemp("lvlm") / "tiny_llava"
    model.lvlm = model.lvlm.merge_and_unload()  # the weights a quantised load starts from
    model.lvlm.save_pretrained(path)
    proc.tokenizer.save_pretrained(path)
    cfg = OmegaConf.create(OmegaConf.to_container(compose("train", ["model=tiny"]).model))  # not struct: + keys
    cfg.lvlm.kind, cfg.lvlm.path = "pretrained", str(path)
    return model.eval(), proc, cfg


def quantised(model: Sim4Seg, cfg, how: str) -> Sim4Seg:
    """``model`` with its LVLM loaded from the directory in ``how`` (phi and SAM shared, as the builder keeps them)."""
    cfg = copy.deepcopy(cfg)
    cfg.quantization = how
    lvlm = LlavaForConditionalGeneration.from_pretrained(cfg.lvlm.path, dtype=torch.float32, **load_kwargs(cfg))
    q = Sim4Seg(lvlm, model.sam, model.seg_token_id, model.image_token_id, model.rvls2m, clip_view=model.clip_view)
    q.text_hidden_fcs.load_state_dict(model.text_hidden_fcs.state_dict())
    return q.eval()


@pytest.mark.parametrize("how", ["nf4", "int8"])
def test_quantised_lvlm_keeps_the_seg_mask_path(pretrained, how):
    model, proc, cfg = pretrained
    q = quantised(model, cfg, how)
    layer = q.lvlm.model.language_model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == ("Linear4bit" if how == "nf4" else "Linear8bitLt")
    kept = [m for n, m in q.lvlm.named_modules() if n.startswith(("lm_head", "model.vision_tower", "model.multi_modal"))
            and isinstance(m, torch.nn.Linear)]
    assert kept and all(type(m) is torch.nn.Linear for m in kept)  # not quantised
    batch = proc.collate(make_samples(proc, 2, "It is [SEG]."))
    with torch.no_grad():
        full, low = model(batch).masks, q(batch).masks
    for f, lo in zip(full, low):
        assert torch.isfinite(lo.logits).all() and lo.logits.std() > 0
        a, b = f.logits > 0, lo.logits > 0
        assert b.any() and (a & b).sum() / (a | b).sum() > 0.8  # the same mask up to quantisation error


def test_qlora_trains_lora_on_the_4bit_base(pretrained):
    from peft import LoraConfig, get_peft_model

    model, proc, cfg = pretrained
    q = quantised(model, cfg, "nf4")
    q.lvlm = get_peft_model(q.lvlm, LoraConfig(r=4, lora_alpha=8, target_modules=cfg.lora.target))
    q.train()
    q(proc.collate(make_samples(proc, 2, "It is [SEG]."))).losses["total"].backward()
    grads = {n: p.grad for n, p in q.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for g in grads.values())
    assert not any(p.requires_grad for n, p in q.lvlm.named_parameters() if "base_layer" in n)


@pytest.mark.parametrize("change,message", [
    ({"quantization": "nf2"}, "model.quantization='nf2': use null, nf4 or int8"),
    ({"lvlm.kind": "random"}, "has none (use model.lvlm.kind=pretrained"),
    ({"trainable": ["language_model", "lm_head"]}, "model.trainable='language_model' would train the quantised"),
])
def test_impossible_settings_are_one_line(pretrained, change, message):
    cfg = copy.deepcopy(pretrained[2])
    cfg.quantization = "nf4"
    for key, value in change.items():
        OmegaConf.update(cfg, key, value)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_kwargs(cfg)
    assert load_kwargs(OmegaConf.create({"lvlm": {"kind": "random"}})) == {}  # null: nothing changes
