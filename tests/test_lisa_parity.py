"""Prompt formats: ``lisa_v1`` gives LISA's ids and labels token for token; ``chat_template`` is the tokenizer's own.

The golden ids (tests/fixtures/lisa_golden_ids.json) were written by scripts/lisa_golden_ids.py, which runs LISA's
tokenizer_image_token and collate_fn label masking under transformers 4.31's slow LlamaTokenizer on a LISA-7B-v1
style tokenizer folder. The same folder is built here (same sentencepiece model, checked by its hash), loaded as
``sim4seg convert-lisa`` loads it, saved and reloaded as a converted model's ``lvlm/`` is, and run through the
Processor with the ``lisa_7b_converted`` preset's settings. Queries, diagnosis and CoT answers, several [SEG],
whitespace, unseen characters and generation prompts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
from conftest import REPO, tiny_config
from omegaconf import OmegaConf

from sim4seg.config import compose
from sim4seg.model.builder import build_tokenizer
from sim4seg.model.families.llava import ClipView
from sim4seg.model.processor import Processor
from sim4seg.model.prompt_formats import IGNORE, LISA_SYSTEM

GOLDEN = json.loads((REPO / "tests" / "fixtures" / "lisa_golden_ids.json").read_text())
N_IMAGE = 5  # image features per image here (LISA's 256 is one placeholder id in its input_ids)

_spec = importlib.util.spec_from_file_location("lisa_golden_ids", REPO / "scripts" / "lisa_golden_ids.py")
golden_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden_script)


def processor(cfg, tok) -> Processor:
    return Processor(tok, ClipView(None, "center_crop", N_IMAGE), sam_size=64, sam_mean=[0.0] * 3, sam_std=[1.0] * 3,
                     max_length=2048, prompt_format=cfg.prompt_format, image_start=cfg.image_start,
                     image_end=cfg.image_end)


@pytest.fixture(scope="module")
def lisa(tmp_path_factory):
    from sim4seg.convert_lisa.release import load_tokenizer

    root = tmp_path_factory.mktemp("lisa-tok")
    golden_script.write_lisa_tokenizer(root / "LISA")
    digest = hashlib.sha256((root / "LISA" / "tokenizer.model").read_bytes()).hexdigest()
    assert digest == GOLDEN["tokenizer_model_sha256"], (
        "this sentencepiece trains another model than the golden ids were made with; rerun "
        "scripts/lisa_golden_ids.py (see its docstring) or pin sentencepiece")
    tok, _ = load_tokenizer(root / "LISA", use_start_end=True)
    tok.save_pretrained(root / "out" / "lvlm")  # what convert-lisa writes; the preset loads it back
    cfg = compose("train", ["model=lisa_7b_converted", f"model.lisa_dir={root / 'out'}"]).model
    return processor(cfg, build_tokenizer(cfg))


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_lisa_v1_ids_and_labels_equal_lisas(lisa, case):
    tok = lisa.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    assert [tok.convert_tokens_to_ids(t) for t in GOLDEN["added_tokens"]] == list(GOLDEN["added_tokens"].values())
    want_ids, want_labels = [], []
    for i, label in zip(case["input_ids"], case["labels"]):  # LISA's one image placeholder -> N_IMAGE image ids
        n = N_IMAGE if i == GOLDEN["image_token_index"] else 1
        want_ids += [image_id if n > 1 else i] * n
        want_labels += [label] * n
    ids, labels = lisa.tokens(case["query"], case["answer"])
    assert tok.convert_ids_to_tokens(ids) == tok.convert_ids_to_tokens(want_ids)
    assert labels == want_labels


def test_generation_prompt_is_the_training_prompt(lisa):
    """What the model is given to answer is exactly the masked part of what it was trained on."""
    case = next(c for c in GOLDEN["cases"] if c["name"] == "diagnosis")
    ids, labels = lisa.tokens(case["query"], case["answer"])
    prompt, prompt_labels = lisa.tokens(case["query"])
    n = labels.index(next(x for x in labels if x != IGNORE))
    assert prompt == ids[:n] and set(prompt_labels) == {IGNORE}


def test_tiny_preset_uses_its_own_chat_template(tiny):
    """No LISA prompt in models that are not LISA: the tiny tokenizer's template, labels on the answer turn only."""
    model, proc = tiny
    tok = proc.tokenizer
    assert tiny_config().prompt_format == proc.prompt_format == "chat_template"
    ids, labels = proc.tokens("Please segment the lesion.", "It is [SEG].")
    image = ids.count(tok.convert_tokens_to_ids("<image>"))
    assert image == proc.n_image_tokens
    text = tok.decode([i for i in ids if i != tok.convert_tokens_to_ids("<image>")])
    assert text == "<s>USER: \nPlease segment the lesion.\nASSISTANT: It is [SEG].</s>"
    assert LISA_SYSTEM.split(".")[0] not in text and "<im_start>" not in tok.get_vocab()
    trained = [i for i in labels if i != IGNORE]
    assert tok.decode(trained) == " It is [SEG].</s>" and labels[-len(trained):] == ids[-len(trained):]
    prompt, _ = proc.tokens("Please segment the lesion.")
    assert tok.decode(prompt).endswith("\nASSISTANT:") and ids[:len(prompt)] == prompt


def test_chat_template_without_a_template_is_refused():
    from sim4seg.errors import UserError
    from sim4seg.model.tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(UserError, match="model.prompt_format=chat_template but the tokenizer has no chat template"):
        processor(OmegaConf.create({"prompt_format": "chat_template", "image_start": None, "image_end": None}), tok)
    with pytest.raises(UserError, match="model.prompt_format='llava'"):
        processor(OmegaConf.create({"prompt_format": "llava", "image_start": None, "image_end": None}), tok)
