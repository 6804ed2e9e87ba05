"""``sim4seg convert-lisa`` on a tiny synthetic LISA release with LISA's exact key names and layout.

The release is a folder as LISA-7B-v1 ships it: config.json, ``pytorch_model-*.bin`` shards with their index, and
the tokenizer as a LLaMA-style sentencepiece ``tokenizer.model`` (trained here by scripts/lisa_golden_ids.py)
with ``added_tokens.json`` (``<im_patch>``, ``<im_start>``, ``<im_end>``, ``[SEG]`` right after the base
vocabulary), no tokenizer.json. The converted model (rebuilt by ``load_run``) must give the logits of LISA's
forward written here from the raw tensors (LLaMA on embeddings whose image positions hold ``mm_projector(CLIP
layer -2 without CLS)``) and the masks of LISA's SAM path (phi on the state before [SEG] as the only sparse
prompt, no dense mask). Bad releases, and a CLIP tower other than LISA's, fail with one line naming them.
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import QUERY, REPO, synthetic
from omegaconf import OmegaConf
from torch import nn

from sim4seg.errors import UserError
from sim4seg.model.families.llava import CLIP_MEAN, CLIP_STD

# The tiny SAM kind of the registry (which loads ``model.sam.checkpoint`` when set) stands in for ViT-H: the
# converter takes a full ``model.sam`` mapping where the CLI takes --sam-variant {auto,vit_h,vit_l,vit_b}.
SAM_CFG = {"kind": "tiny", "img_size": 64, "embed_dim": 32, "vit_dim": 32, "depth": 2}
CLIP_HIDDEN, CLIP_LAYERS, HIDDEN, IMAGE_SIZE, PATCH = 32, 3, 64, 32, 8
# The tiny CLIP stands in for LISA's ViT-L/14 at 224 px the same way (the CLI always asks for LISA's).
TOWER = {"hidden_size": CLIP_HIDDEN, "num_hidden_layers": CLIP_LAYERS, "patch_size": PATCH, "image_size": IMAGE_SIZE}

_spec = importlib.util.spec_from_file_location("lisa_golden_ids", REPO / "scripts" / "lisa_golden_ids.py")
golden_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden_script)


def write_release(folder, state: dict, config: dict, n_shards: int = 2, with_seg: bool = True) -> None:
    """LISA's layout: config.json, tokenizer files, pytorch_model-0000i-of-0000n.bin shards and their index."""
    golden_script.write_lisa_tokenizer(folder)
    if not with_seg:
        added = json.loads((folder / "added_tokens.json").read_text())
        del added["[SEG]"]
        (folder / "added_tokens.json").write_text(json.dumps(added))
    (folder / "config.json").write_text(json.dumps(config))
    keys = list(state)
    size = -(-len(keys) // n_shards)
    wmap = {}
    for i in range(n_shards):
        name = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[i * size:(i + 1) * size]}
        torch.save(part, folder / name)
        wmap.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, LlamaConfig, LlamaForCausalLM

    from sim4seg.model.sam import _tiny

    root = tmp_path_factory.mktemp("lisa")
    torch.manual_seed(0)
    base = golden_script.write_lisa_tokenizer(root / "LISA-tiny")
    vocab = base + 4  # <im_patch>, <im_start>, <im_end>, [SEG]

    clip = CLIPModel(CLIPConfig(
        vision_config={"hidden_size": CLIP_HIDDEN, "intermediate_size": 64, "num_hidden_layers": CLIP_LAYERS,
                       "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": PATCH},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        projection_dim=16)).eval()
    improc = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                image_mean=CLIP_MEAN, image_std=CLIP_STD)
    clip.save_pretrained(root / "clip")  # a CLIPModel folder, as openai/clip-vit-large-patch14
    improc.save_pretrained(root / "clip")

    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    with torch.no_grad():
        for name, p in llama.named_parameters():
            if "norm" in name:  # not all ones, so a dropped norm weight would show
                p.uniform_(0.5, 1.5)
    sam = _tiny(OmegaConf.create(SAM_CFG)).eval()
    projector = nn.Linear(CLIP_HIDDEN, HIDDEN)
    phi = nn.ModuleList([nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, 32),
                                       nn.Dropout(0.0))])  # LISA's text_hidden_fcs

    state = {k: v.detach() for k, v in llama.state_dict().items()}
    state.update({f"model.mm_projector.{k}": v.detach() for k, v in projector.state_dict().items()})
    state.update({f"model.text_hidden_fcs.{k}": v.detach() for k, v in phi.state_dict().items()})
    state.update({f"model.visual_model.{k}": v.detach() for k, v in sam.state_dict().items()})
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # saved by old transformers; skipped
    config = {"architectures": ["LISAForCausalLM"], "model_type": "llava", "hidden_size": HIDDEN,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_scaling": None,
              "tie_word_embeddings": False, "vocab_size": vocab, "torch_dtype": "float32",
              "mm_hidden_size": CLIP_HIDDEN, "mm_use_im_start_end": True, "mm_use_im_patch_token": False,
              "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
              "mm_vision_tower": "openai/clip-vit-large-patch14", "vision_tower": "openai/clip-vit-large-patch14",
              "out_dim": 32, "train_mask_decoder": True, "use_mm_proj": True, "bos_token_id": 1,
              "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "4.31.0"}
    write_release(root / "LISA-tiny", state, config)
    return SimpleNamespace(root=root, src=root / "LISA-tiny", clip_dir=root / "clip", state=state, config=config,
                           clip=clip, improc=improc, llama=llama, sam=sam, base=base, vocab=vocab)


@pytest.fixture(scope="module")
def converted(release):
    from sim4seg.convert_lisa.command import convert_lisa

    return convert_lisa(release.src, release.clip_dir, release.root / "out", name="LISA-tiny", sam=SAM_CFG,
                        tower=TOWER)


def test_converted_model_answers_and_segments_as_lisa(release, converted):
    from sim4seg.model.checkpoint import load_run, require_finished

    out = converted
    require_finished(out)  # a converted release is complete: eval and predict (zero-shot rows) take it
    model, proc, cfg = load_run(out)
    model.eval()
    m = cfg.model
    assert (m.lvlm.kind, m.lvlm.path, m.sam.checkpoint) == ("pretrained", str(out / "lvlm"), str(out / "sam.safetensors"))
    assert (m.seg_state, m.clip_view, m.image_start, m.image_end) == ("predicting", "center_crop", "<im_start>", "<im_end>")
    assert m.prompt_format == "lisa_v1" and proc.prompt_format == "lisa_v1"
    assert not m.lora.enabled and not cfg.rvls2m.enabled and cfg.data.answer_format == "seg"
    assert (out / "README.md").read_text().startswith("# LISA-tiny")
    assert (out / "lvlm" / "model.safetensors.index.json").exists()

    # Tokens: LISA's ids kept (LISA-7B-v1's 32000-32003, here right after the tiny base vocabulary), <image>
    # added after them, and the LLaVA config points at it.
    tok, b, v = proc.tokenizer, release.base, release.vocab
    assert tok.convert_tokens_to_ids(["<im_patch>", "<im_start>", "<im_end>", "[SEG]"]) == [b, b + 1, b + 2, b + 3]
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_id == v == model.lvlm.config.image_token_index
    assert model.lvlm.get_input_embeddings().num_embeddings == v + 1
    proj = model.lvlm.model.multi_modal_projector
    assert torch.equal(proj.linear_2.weight, torch.eye(HIDDEN)) and not proj.linear_2.bias.any()

    image, _ = synthetic(0)
    batch = proc.collate([proc.sample(image, QUERY, "It is [SEG].")])
    ids = batch["input_ids"][0]
    n = (IMAGE_SIZE // PATCH) ** 2
    start = int((ids == b + 1).nonzero()[0])
    assert ids[start + 1:start + 1 + n].eq(image_id).all() and ids[start + 1 + n] == b + 2

    with torch.no_grad():
        logits = model.lvlm(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                            attention_mask=batch["attention_mask"]).logits[0]
        decoded = model(batch).masks[0]

        # LISA's forward from the raw tensors.
        s = release.state
        pixels = release.improc(images=image, return_tensors="pt")["pixel_values"]
        feats = release.clip.vision_model(pixels, output_hidden_states=True).hidden_states[-2][0, 1:]
        image_embeds = F.linear(feats, s["model.mm_projector.weight"], s["model.mm_projector.bias"])
        is_image = ids == image_id
        embeds = s["model.embed_tokens.weight"][ids.masked_fill(is_image, 0)]
        embeds[is_image] = image_embeds
        ref = release.llama(inputs_embeds=embeds[None], output_hidden_states=True)
        ref_logits, ref_hidden = ref.logits[0], ref.hidden_states[-1][0]

        seg_pos = int((ids == b + 3).nonzero()[0]) - 1  # the state that predicts [SEG]
        h = F.relu(F.linear(ref_hidden[seg_pos], s["model.text_hidden_fcs.0.0.weight"], s["model.text_hidden_fcs.0.0.bias"]))
        prompt = F.linear(h, s["model.text_hidden_fcs.0.2.weight"], s["model.text_hidden_fcs.0.2.bias"])
        sam = release.sam
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        low_res, iou = sam.mask_decoder(image_embeddings=sam.image_encoder(batch["sam_images"]),
                                        image_pe=sam.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=torch.cat([sparse, prompt[None, None]], 1),
                                        dense_prompt_embeddings=dense, multimask_output=False)
        ref_masks = sam.postprocess_masks(low_res, batch["resize_hw"][0], batch["orig_hw"][0])[:, 0]

    torch.testing.assert_close(logits[:, :v], ref_logits, atol=1e-5, rtol=1e-4)
    # The new lm_head row is the mean row: its logit is the mean logit, so it never outranks the argmax.
    torch.testing.assert_close(logits[:, v], ref_logits.mean(-1), atol=1e-5, rtol=1e-4)
    assert decoded.logits.shape == ref_masks.shape == (1, *image.shape[:2])
    torch.testing.assert_close(decoded.logits, ref_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(decoded.iou, iou[:, 0], atol=1e-5, rtol=1e-4)


def variant(release, name: str, drop=(), add=None, with_seg: bool = True):
    state = {k: v for k, v in release.state.items() if k not in drop} | (add or {})
    write_release(release.root / name, state, release.config, n_shards=1, with_seg=with_seg)
    return release.root / name


def test_missing_key_is_named(release):
    from sim4seg.convert_lisa.command import convert_lisa

    src = variant(release, "missing", drop=("model.layers.1.mlp.down_proj.weight",))
    out = release.root / "out-missing"
    with pytest.raises(UserError, match=r"missing \['model\.layers\.1\.mlp\.down_proj\.weight'\]"):
        convert_lisa(src, release.clip_dir, out, sam=SAM_CFG, tower=TOWER)
    assert not out.exists()  # checked before anything is written


def test_wrong_shape_is_named_and_nothing_is_left(release):
    from sim4seg.convert_lisa.command import convert_lisa

    src = variant(release, "shape", add={"model.text_hidden_fcs.0.2.weight": torch.zeros(16, HIDDEN)})
    out = release.root / "out-shape"
    with pytest.raises(UserError, match=r"model\.text_hidden_fcs\.0\.2\.weight has shape \(16, 64\), expected \(32, 64\)"):
        convert_lisa(src, release.clip_dir, out, sam=SAM_CFG, tower=TOWER)
    assert not out.exists()  # found while writing: the partial output is removed


def test_unexpected_key_is_named_by_the_cli(release, capsys):
    from sim4seg.cli import main

    src = variant(release, "unexpected", add={"model.mm_projector.2.weight": torch.zeros(HIDDEN, HIDDEN)})
    argv = ["convert-lisa", "--src", str(src), "--clip", str(release.clip_dir), "--out", str(release.root / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unexpected" in err and "model.mm_projector.2.weight" in err and len(err.strip().splitlines()) == 1


def test_tiny_sam_is_no_official_variant_and_seg_is_required(release, capsys):
    from sim4seg.cli import main
    from sim4seg.convert_lisa.command import convert_lisa

    argv = ["convert-lisa", "--src", str(release.src), "--clip", str(release.clip_dir), "--out",
            str(release.root / "o2")]
    assert main(argv) == 2
    assert "none of vit_h (1280, 32), vit_l (1024, 24), vit_b (768, 12)" in capsys.readouterr().err
    src = variant(release, "noseg", with_seg=False)
    with pytest.raises(UserError, match=r"lacks \[SEG\]"):
        convert_lisa(src, release.clip_dir, release.root / "o3", sam=SAM_CFG, tower=TOWER)


def test_clip_must_be_lisas_tower(release):
    """Another CLIP (e.g. clip-vit-large-patch14-336: 576 image tokens, features LISA never saw) is refused in one
    line naming both towers, before anything is written."""
    from sim4seg.convert_lisa.command import convert_lisa

    out = release.root / "out-clip"
    with pytest.raises(UserError) as e:
        convert_lisa(release.src, release.clip_dir, out, sam=SAM_CFG)
    msg = str(e.value)
    assert "ViT-(width 32, 3 layers)/8 at 32 px" in msg and "ViT-L/14 at 224 px" in msg and "\n" not in msg
    assert not out.exists()


def test_sam_variant_from_shapes():
    from sim4seg.convert_lisa.release import sam_settings

    def weights(width: int, depth: int):
        where = {f"model.visual_model.image_encoder.blocks.{i}.norm1.weight": None for i in range(depth)}
        return SimpleNamespace(where=where, meta=lambda key: ((width, 3, 16, 16), torch.bfloat16))

    assert sam_settings("auto", weights(1280, 32)) == {"kind": "vit_h"}
    assert sam_settings("auto", weights(1024, 24)) == {"kind": "vit_l"}
    assert sam_settings("vit_b", weights(768, 12)) == {"kind": "vit_b"}
    with pytest.raises(UserError, match="which is vit_h"):
        sam_settings("vit_b", weights(1280, 32))
    with pytest.raises(UserError, match="none of"):
        sam_settings("auto", weights(1280, 24))
