"""``data cot --backend hf:DIR`` for both LVLM families: tiny random-init LLaVA and Qwen2.5-VL folders saved the
way transformers saves them (tokenizer trained offline), loaded through ``AutoModelForImageTextToText`` /
``AutoProcessor``. Random weights: the tests check the mechanics (image tokens expanded in the prompt, left
padding, greedy generation equal to a step-by-step argmax over full forward passes, determinism), not the text."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sim4seg.cli import main
from sim4seg.data.cot import ChatRequest, generate_cots
from sim4seg.data.cot.hf_backend import HFBackend
from sim4seg.data.cot.store import CotState
from sim4seg.data.schema import iter_records
from sim4seg.data.synthetic import write_synthetic
from sim4seg.errors import UserError
from sim4seg.model.prompt_formats import lisa_v1_text
from sim4seg.model.tokenizer import build_tiny_tokenizer

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Minimal chat templates in each family's conversation format (the real releases ship longer ones).
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_TEMPLATE = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                  "{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
                  "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
CLIP_SIZE, CLIP_PATCH = 16, 4
QWEN_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}


def _save_llava(out: Path, template: bool) -> None:
    """Model + tokenizer (with its chat template or, as LISA's releases, none) + CLIP image processor, no
    processor_config.json."""
    from tokenizers import processors
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tok = build_tiny_tokenizer()
    # like Llama's tokenizers, encoding adds BOS (the tiny tokenizer's template writes one too)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    if not template:
        tok.chat_template = None
    conf = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=CLIP_SIZE, patch_size=CLIP_PATCH),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=(CLIP_SIZE // CLIP_PATCH) ** 2,
        vision_feature_layer=-2, vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(conf).save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE}
                       ).save_pretrained(out)


def _save_qwen(out: Path) -> None:
    """Model + Qwen2_5_VLProcessor (tokenizer with Qwen's special tokens, Qwen2VLImageProcessor, template)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    conf = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                       "fullatt_block_indexes": [1]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(conf).save_pretrained(out)
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**QWEN_PIXELS), tokenizer=tok,
                        video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_TEMPLATE).save_pretrained(out)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """``llava``: no processor config, the tokenizer's chat template; ``llava_lisa``: no template at all;
    ``llava_template``: a saved LlavaProcessor with its own chat template; ``qwen2_5_vl``: the full Qwen2.5-VL
    folder."""
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaProcessor

    root = tmp_path_factory.mktemp("hf_models")
    out = {k: root / k for k in ("llava", "llava_lisa", "llava_template", "qwen2_5_vl")}
    _save_llava(out["llava"], template=True)
    _save_llava(out["llava_lisa"], template=False)
    shutil.copytree(out["llava_lisa"], out["llava_template"])
    LlavaProcessor(image_processor=AutoImageProcessor.from_pretrained(out["llava_lisa"]),
                   tokenizer=AutoTokenizer.from_pretrained(out["llava_lisa"]), patch_size=CLIP_PATCH,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=LLAVA_TEMPLATE).save_pretrained(out["llava_template"])
    _save_qwen(out["qwen2_5_vl"])
    return out


def _requests() -> list[ChatRequest]:
    rng = np.random.default_rng(0)
    return [ChatRequest("Short question?", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), "a"),
            ChatRequest("A much longer question about the image " * 3, rng.integers(0, 255, (90, 30, 3), np.uint8),
                        "b")]


def _image_tokens(kind: str, image: np.ndarray) -> int:
    """The number of image tokens the family must put in the prompt for ``image``, computed independently."""
    if kind.startswith("llava"):
        return (CLIP_SIZE // CLIP_PATCH) ** 2  # CLIP's patches, CLS dropped ("default" feature strategy)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(*image.shape[:2], factor=28, **QWEN_PIXELS)
    return (h // 28) * (w // 28)  # 14-pixel patches merged 2 x 2


def _greedy_without_cache(backend: HFBackend, enc: dict, steps: int) -> list[list[int]]:
    """Step-by-step argmax over full forward passes (no KV cache), stopping each row at EOS."""
    eos = backend.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    rest = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    rows: list[list[int]] = [[] for _ in range(ids.shape[0])]
    done = [False] * ids.shape[0]
    with torch.no_grad():
        for _ in range(steps):
            nxt = backend.model(input_ids=ids, attention_mask=mask, **rest).logits[:, -1].argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    rows[i].append(t)
                    done[i] = t in eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if "mm_token_type_ids" in rest:  # Qwen: which positions are image tokens (new ones are text)
                rest["mm_token_type_ids"] = torch.cat([rest["mm_token_type_ids"], torch.zeros_like(nxt[:, None])], 1)
    return rows


@pytest.mark.parametrize("kind", ["llava", "llava_lisa", "llava_template", "qwen2_5_vl"])
def test_hf_backend_generates_for_both_families(folders, kind: str) -> None:
    max_new = 6
    backend = HFBackend(folders[kind], max_new_tokens=max_new)
    family = "qwen2_5_vl" if kind == "qwen2_5_vl" else "llava"
    assert backend.family == family
    assert type(backend.model).__name__ == {"llava": "LlavaForConditionalGeneration",
                                            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}[family]
    reqs = _requests()

    prompt = backend.prompt(reqs[0].text)
    if kind == "llava":  # the tokenizer's template (the tiny tokenizer's plain one)
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": reqs[0].text}]}]
        assert prompt == backend.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert prompt.startswith(backend.tokenizer.bos_token)  # so the BOS check below covers a template's BOS
    elif kind == "llava_lisa":  # no template in the folder: LISA's LLaVA-v1 conversation
        assert prompt == lisa_v1_text(reqs[0].text)
    elif kind == "llava_template":
        assert prompt == f"USER: <image>\n{reqs[0].text} ASSISTANT:"
    else:
        assert prompt == (f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{reqs[0].text}<|im_end|>\n"
                          "<|im_start|>assistant\n")

    if kind in ("llava", "llava_lisa"):
        assert backend.processor.patch_size == CLIP_PATCH  # no processor config: completed from the model config
    enc = backend.encode(reqs)
    if family == "llava":  # one BOS, first, whether the template or the tokenizer writes it
        bos = backend.tokenizer.bos_token_id
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True):
            real = ids[mask.bool()].tolist()
            assert real[0] == bos and real.count(bos) == 1
    image_id = backend.processor.image_token_id
    assert (enc["input_ids"] == image_id).sum(1).tolist() == [_image_tokens(kind, r.image) for r in reqs]
    assert enc["attention_mask"][0, 0] == 0 and bool(enc["attention_mask"][:, -1].all())  # left padding
    if family == "qwen2_5_vl":
        assert enc["image_grid_thw"].prod(1).div(4).tolist() == [_image_tokens(kind, r.image) for r in reqs]

    with torch.no_grad():  # the padded row's last logits equal those of the request alone
        batched = backend.model(**enc).logits[0, -1]
        alone = backend.model(**backend.encode(reqs[:1])).logits[0, -1]
        other = [ChatRequest(reqs[0].text, 255 - reqs[0].image)]
        changed = backend.model(**backend.encode(other)).logits[0, -1]
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(alone, changed, atol=1e-4)  # the image reaches the language model

    new = backend.generate_ids(reqs)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= max_new
    expected = _greedy_without_cache(backend, enc, max_new)
    assert new.shape[1] == max(len(e) for e in expected)
    pad = backend.tokenizer.pad_token_id
    for row, exp in zip(new.tolist(), expected, strict=True):
        assert row[:len(exp)] == exp and all(t == pad for t in row[len(exp):])
    texts = backend.generate(reqs)
    assert texts == [t.strip() for t in backend.tokenizer.batch_decode(new, skip_special_tokens=True)]
    assert backend.generate(reqs) == texts  # greedy decoding is deterministic


def _dataset(root: Path, n: int) -> None:
    write_synthetic(root, n, seed=0, progress=False)
    path = root / "records.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        r["cot"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


class _Critic:
    def __init__(self) -> None:
        self.calls: list[list[ChatRequest]] = []

    def generate(self, batch: list[ChatRequest]) -> list[str]:
        self.calls.append(batch)
        return ["ACCEPT"] * len(batch)


@pytest.mark.parametrize("kind", ["llava_template", "qwen2_5_vl"])
def test_pipeline_with_hf_spec_leaves_gate_rejections_for_review(tmp_path: Path, folders, kind: str) -> None:
    data = tmp_path / "ds"
    _dataset(data, 3)
    critic = _Critic()
    summary = generate_cots(data, f"hf:{folders[kind]}", critic, max_rounds=2, batch_size=3, progress=False,
                            backend_options={"max_new_tokens": 4})
    assert (summary.accepted, summary.needs_review, summary.failed) == (0, 3, 0)
    assert critic.calls == []  # the gate rejected every random-model attempt, so the critic was never asked
    state = CotState(data).entries
    assert len(state) == 3
    for entry in state.values():
        assert entry["status"] == "needs_review" and entry["rounds"] == 2 and len(entry["attempts"]) == 2
        assert all(a["by"] == "gate" and a["verdict"] == "REJECT" and a["reason"] for a in entry["attempts"])
        assert entry["assistant"] == f"hf:{folders[kind]}"
    assert {r.cot for _, r in iter_records(data) if not isinstance(r, Exception)} == {None}


def test_hf_backend_refuses_other_architectures(tmp_path: Path, folders, capsys) -> None:
    from transformers import BertConfig

    other = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               architectures=["BertModel"]).save_pretrained(other)
    data = tmp_path / "ds"
    _dataset(data, 1)
    rc = main(["data", "cot", "--data", str(data), "--assistant", f"hf:{other}", "--critic", f"hf:{other}",
               "--max-rounds", "1"])
    err = capsys.readouterr().err
    errors = [ln for ln in re.split(r"[\r\n]", err) if ln.startswith("error:")]
    assert rc == 2 and "Traceback" not in err and len(errors) == 1
    assert "'bert' (BertModel)" in errors[0] and "llava" in errors[0] and "qwen2_5_vl" in errors[0]
    with pytest.raises(UserError, match="no config.json"):
        HFBackend(tmp_path / "empty")
    no_processor = tmp_path / "llava_no_image_processor"
    shutil.copytree(folders["llava_lisa"], no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(UserError, match="lacks a usable processor"):
        HFBackend(no_processor)
