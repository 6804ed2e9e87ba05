"""``sim4seg convert-lisa --src LISA_DIR --clip CLIP_DIR --out DIR``: a released LISA checkpoint as a Sim4Seg model.

LISA-7B-v1 / LISA-13B-llama2-v1 (and Sim4Seg releases in LISA's format) are HF-style folders in LLaVA-v1 layout:
``config.json``, the LLaMA sentencepiece tokenizer with ``<im_patch>``, ``<im_start>``, ``<im_end>``, ``[SEG]``
added, and weights named as names.py lists. The CLIP tower is not in the release; it comes from a local
``clip-vit-large-patch14`` folder (ViT-L/14 at 224 px; any other tower is refused). The output is a directory
that ``load_run`` (eval, predict) takes like a run directory:

    DIR/lvlm/                  transformers LlavaForConditionalGeneration (safetensors), tokenizer, CLIP processor
    DIR/sam.safetensors        the SAM state dict (image_encoder.*, prompt_encoder.*, mask_decoder.*)
    DIR/config.yaml            configs/train.yaml with model=lisa_7b, filled in for this checkpoint
    DIR/trainable.safetensors  what the config trains (phi, mask decoder, lm_head, embed_tokens)
    DIR/README.md              model card
    DIR/finished.json          written last: a complete released model (0 training steps here)

Exactness: LISA's single-Linear projector is transformers' two-layer projector with ``projector_hidden_act=linear``
(identity), ``linear_1`` = LISA's projector and ``linear_2`` = identity with zero bias; ``<image>`` is added to the
tokenizer (its embedding row is only ever replaced by image features; the new lm_head row is the mean row); CLIP
features are layer -2 without CLS; the [SEG] state is the one that predicted [SEG]; the prompt format is
``lisa_v1`` (LISA's ids and labels, token for token). Weight dtypes are kept.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlavaForConditionalGeneration

from sim4seg.convert_lisa.names import lisa_names, to_sim4seg
from sim4seg.convert_lisa.release import (
    IM_END,
    IM_START,
    LISA_CLIP,
    check_tower,
    clip_config,
    clip_tower,
    llava_config,
    load_tokenizer,
    sam_settings,
    sam_shapes,
)
from sim4seg.convert_lisa.weights import ReleaseWeights, ShardWriter, checked, disk_names, grow_rows, read_json
from sim4seg.errors import UserError
from sim4seg.model.builder import DTYPES, build_model
from sim4seg.model.checkpoint import RELEASED, TRAINABLE, load_trainable, save_trainable, write_finished
from sim4seg.model.prompt_formats import LISA_SYSTEM
from sim4seg.model.tokens import IMAGE_TOKEN, SEG_TOKEN

SHARD_BYTES = 2 * 1024**3
_GROWN = ("lm_head.weight", "model.language_model.embed_tokens.weight")  # get the <image> row(s): the mean row
PHI = ("0.weight", "0.bias", "2.weight", "2.bias")  # LISA's text_hidden_fcs[0]: Linear, ReLU, Linear


def convert_lisa(src: str | Path, clip: str | Path, out: str | Path, name: str | None = None,
                 sam: str | Mapping = "auto", dtype: str = "auto", shard_bytes: int = SHARD_BYTES,
                 tower: Mapping[str, int] = LISA_CLIP) -> Path:
    """Convert the LISA-format checkpoint ``src`` (with the CLIP tower from ``clip``) into the model directory ``out``.

    sam: ``auto`` (the SAM variant from the image encoder's width and depth: 1280/32 vit_h, 1024/24 vit_l,
    768/12 vit_b), a variant name (checked against the weights), or a full ``model.sam`` mapping for SAM kinds of
    the registry beyond segment_anything's (e.g. ``{"kind": "tiny", "img_size": 64, ...}`` in tests; the
    checkpoint is filled in). dtype: ``auto`` keeps the dtype of the release (LISA: bfloat16), else float32 /
    bfloat16 / float16. name: only the model card's title (default: the folder name of ``src``). tower: the CLIP
    vision sizes ``clip`` must have (LISA's ViT-L/14 at 224 px; tests pass a tiny tower's).

    Every key of the release must be one LISA's layout expects and every expected key must be there (UserError
    naming them otherwise; ``rotary_emb.inv_freq`` buffers of old LLaMA saves are skipped).

    Memory: the weights stream file by file (weights.py); output shards of ``shard_bytes`` (2 GB) are written as
    they fill, and SAM (~1.3 GB in bf16 for ViT-H) and phi stay in memory. The final check rebuilds the model from
    ``out`` as ``load_run`` does, and that dominates: ~14 GB (7B, bf16) / ~26 GB (13B) for the LLaVA plus ~2.5 GB
    while SAM ViT-H is built in float32, so plan ~17 GB (7B) / ~30 GB (13B) of RAM, the same as evaluating the
    model. Disk: about the size of the release plus CLIP (~0.6 GB) and ``trainable.safetensors`` (~0.6 GB for 7B).
    """
    src, clip, out = Path(src).resolve(), Path(clip).resolve(), Path(out).resolve()
    _check_dirs(src, clip, out)
    existed = out.exists()
    try:
        return _convert(src, clip, out, name, sam, dtype, shard_bytes, tower)
    except BaseException:  # leave no half-written model behind (out was absent or empty)
        if out.exists():
            shutil.rmtree(out)
            if existed:
                out.mkdir()
        raise


def _convert(src: Path, clip: Path, out: Path, name: str | None, sam: str | Mapping, dtype: str,
             shard_bytes: int, tower: Mapping[str, int]) -> Path:
    lisa = read_json(src / "config.json")
    weights = ReleaseWeights(src)

    # ---- what the release must contain ------------------------------------------------------------------
    use_start_end = lisa.get("mm_use_im_start_end")
    tok, image_id = load_tokenizer(src, use_start_end)
    if use_start_end is None:  # not recorded: LISA wraps the image when its tokenizer has the tokens
        use_start_end = all(t in tok.get_vocab() for t in (IM_START, IM_END))
    vision, improc = clip_config(clip)
    embed_shape, src_dtype = weights.meta("model.embed_tokens.weight")
    dtype = _dtype(dtype, src_dtype)
    rows = max(embed_shape[0], len(tok))
    if image_id >= rows:
        raise UserError(f"{src}: the tokenizer has {len(tok)} tokens but the embeddings only {embed_shape[0]} rows")
    conf = llava_config(lisa, vision, tok, image_id, rows, dtype)
    with torch.device("meta"):
        meta = LlavaForConditionalGeneration(conf)
    shapes = {"lvlm": {k: tuple(v.shape) for k, v in meta.state_dict().items()}}
    on_disk = disk_names(meta, shapes["lvlm"])
    del meta
    weights.check(lisa_names({"lvlm": set(shapes["lvlm"]), "phi": set(PHI)}), parts=("lvlm", "phi"))

    cfg = _compose()
    cfg.model.sam = OmegaConf.merge(cfg.model.sam, sam_settings(sam, weights),
                                    {"checkpoint": str(out / "sam.safetensors")})
    shapes["sam"] = sam_shapes(cfg.model.sam)
    hidden, prompt_dim = conf.text_config.hidden_size, shapes["sam"]["prompt_encoder.no_mask_embed.weight"][1]
    shapes["phi"] = dict(zip(PHI, [(hidden, hidden), (hidden,), (prompt_dim, hidden), (prompt_dim,)]))
    wanted = lisa_names({part: set(s) for part, s in shapes.items()})
    weights.check(wanted)
    check_tower(clip, vision, tower)

    # ---- the LLaVA directory, file by file ------------------------------------------------------------------
    lvlm_dir = out / "lvlm"
    lvlm_dir.mkdir(parents=True)
    writer = ShardWriter(lvlm_dir, shard_bytes)
    kept: dict[str, dict[str, torch.Tensor]] = {"phi": {}, "sam": {}}
    wrong, seen = [], set()
    for key, t in weights.tensors():
        seen.add(key)
        part, native = to_sim4seg(key) or ("", "")
        if native not in shapes.get(part, {}):  # in the files, but the index did not list it
            wrong.append(f"{key} is unexpected")
        elif part == "lvlm":
            t = grow_rows(t, rows) if native in _GROWN else t
            writer.add(on_disk[native], checked(t, shapes[part][native], key, wrong).to(dtype))
        else:
            kept[part][native] = checked(t, shapes[part][native], key, wrong)
        if len(wrong) >= 3:
            break
    if not wrong and wanted - seen:
        wrong.append(f"missing {sorted(wanted - seen)[:5]} (listed in the index, not in the files)")
    if wrong:
        raise UserError(f"{src}: weights do not fit the model its config.json describes: {'; '.join(wrong)}")
    writer.add(on_disk["model.multi_modal_projector.linear_2.weight"], torch.eye(hidden, dtype=dtype))
    writer.add(on_disk["model.multi_modal_projector.linear_2.bias"], torch.zeros(hidden, dtype=dtype))
    vt = {"model.vision_tower." + k: v for k, v in clip_tower(clip, dtype).state_dict().items()}
    want_vt = {k for k in shapes["lvlm"] if k.startswith("model.vision_tower.")}
    if set(vt) != want_vt:
        raise UserError(f"{clip}: the CLIP vision weights do not fit transformers' LLaVA vision tower: missing "
                        f"{sorted(want_vt - set(vt))[:3]}, unexpected {sorted(set(vt) - want_vt)[:3]}")
    for k, v in vt.items():
        writer.add(on_disk[k], checked(v, shapes["lvlm"][k], f"{clip}: {k}", wrong).contiguous())
    if wrong:
        raise UserError(f"{clip}: CLIP weights do not fit its config: {'; '.join(wrong)}")
    del vt
    shards = writer.finish()
    conf.save_pretrained(lvlm_dir)
    tok.save_pretrained(lvlm_dir)
    improc.save_pretrained(lvlm_dir)
    sam_state = kept["sam"]
    save_file({k: v.to(dtype).contiguous() for k, v in sam_state.items()}, str(out / "sam.safetensors"))

    # ---- config.yaml, then rebuild as load_run does, check, and write the trained weights -------------------
    m = cfg.model
    m.dtype = _dtype_name(dtype)
    m.lvlm.path = str(lvlm_dir)
    m.prompt_format = "lisa_v1"
    m.image_start, m.image_end = (IM_START, IM_END) if use_start_end else (None, None)
    m.seg_state, m.clip_view = "predicting", "center_crop"
    m.lora.enabled = False  # LISA's LoRA is merged into the released weights
    m.max_length = min(int(m.max_length), int(conf.text_config.max_position_embeddings))
    cfg.rvls2m.enabled = False  # LISA has no RVLS2M
    cfg.data.answer_format = "seg"
    cfg.train.output_dir = str(out)
    cfg.source = {"format": "lisa", "path": str(src), "clip": str(clip), "name": name or src.name}
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    model, proc = build_model(cfg.model, cfg.rvls2m, cfg.loss)
    _verify(model, shards, sam_state, dtype, image_id, tok)
    model.text_hidden_fcs.load_state_dict({k: v.to(dtype) for k, v in kept["phi"].items()})
    save_trainable(model, out / TRAINABLE)
    load_trainable(model, out / TRAINABLE)
    del model
    _model_card(out, cfg, tok, image_id, rows - embed_shape[0], n_image=proc.n_image_tokens,
                crop=improc.crop_size, sam_kind=cfg.model.sam.kind)
    write_finished(out, 0, 0, source=RELEASED)  # last: the folder is complete (eval and predict check it)
    return out


def cmd_convert_lisa(args) -> int:
    """The ``sim4seg convert-lisa`` command."""
    out = convert_lisa(args.src, args.clip, args.out, args.name, args.sam_variant, args.dtype)
    print(f"converted {args.src} to {out}\nuse it with: python -m sim4seg.eval ckpt={out} ... | "
          f"sim4seg predict --ckpt {out} ...")
    return 0


def _check_dirs(src: Path, clip: Path, out: Path) -> None:
    if not (src / "config.json").is_file():
        raise UserError(f"--src {src}: no config.json there; pass a LISA release folder (e.g. LISA-7B-v1)")
    if not clip.is_dir():
        raise UserError(f"--clip {clip} does not exist; pass a local clip-vit-large-patch14 folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; remove it or choose another folder")


def _dtype(name: str, src_dtype: torch.dtype) -> torch.dtype:
    if name == "auto":
        return src_dtype if src_dtype in DTYPES.values() else torch.float32
    if name not in DTYPES:
        raise UserError(f"dtype={name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def _compose() -> DictConfig:
    """configs/train.yaml with ``model=lisa_7b`` (Hydra's composition, as ``sim4seg.train`` sees it)."""
    from sim4seg.config import compose

    cfg = compose("train", ["model=lisa_7b"])
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))


def _verify(model, shards: list[Path], sam_state: dict, dtype: torch.dtype, image_id: int, tok) -> None:
    """The rebuilt model holds exactly what was written (transformers random-initialises what it cannot match)."""
    lvlm = model.lvlm
    state = lvlm.state_dict()
    native = {disk: k for k, disk in disk_names(lvlm, state).items()}
    bad = []
    for f in shards:
        with safe_open(str(f), "pt") as s:
            for k in s.keys():
                n = native.get(k, k)
                if n not in state or not torch.equal(state[n], s.get_tensor(k)):
                    bad.append(k)
    own_sam = model.sam.state_dict()
    bad += ["sam." + k for k, v in sam_state.items() if not torch.equal(own_sam[k], v.to(dtype))]
    if bad:
        raise UserError(f"the converted model does not load back as written: {bad[:3]} ({len(bad)} tensors)")
    ids = [image_id, tok.convert_tokens_to_ids(SEG_TOKEN)]
    if [model.image_token_id, model.seg_token_id] != ids or lvlm.config.image_token_index != image_id:
        raise UserError(f"the converted model's {IMAGE_TOKEN}/{SEG_TOKEN} ids differ from the conversion's {ids}")


def _model_card(out: Path, cfg: DictConfig, tok, image_id: int, added_rows: int, n_image: int, crop: dict,
                sam_kind: str) -> None:
    m, src = cfg.model, cfg.source
    ids = ", ".join(f"`{t}`={tok.convert_tokens_to_ids(t)}" for t in (SEG_TOKEN, IM_START, IM_END) if t in tok.get_vocab())
    (out / "README.md").write_text(
        f"# {src.name} (Sim4Seg format)\n\n"
        f"Converted by `sim4seg convert-lisa` from the LISA-format checkpoint `{src.path}` with the CLIP vision "
        f"tower of `{src.clip}`. Load it with `python -m sim4seg.eval ckpt={out} ...` or "
        f"`sim4seg predict --ckpt {out} ...`; `load_run` rebuilds it from `config.yaml`.\n\n"
        "## Settings (LISA's)\n\n"
        f"- LVLM: transformers `LlavaForConditionalGeneration` in `lvlm/`, dtype `{m.dtype}`; LISA's single-Linear "
        "`mm_projector` is `linear_1` of the projector, with `projector_hidden_act=linear` and `linear_2` = identity "
        "(exactly LISA's projection).\n"
        f"- Prompt: `prompt_format={m.prompt_format}`, LISA's llava_v1 conversation (system: \"{LISA_SYSTEM}\") "
        f"tokenised as LISA did, image tokens wrapped in `{m.image_start}` ... `{m.image_end}`; {n_image} image "
        f"tokens from CLIP at {crop.get('height')} px, center crop (CLIP image processor), layer -2 without CLS.\n"
        f"- Tokens: {ids}; `{IMAGE_TOKEN}`={image_id}"
        f"{f' (added: {added_rows} new embedding row(s), set to the mean row)' if added_rows else ''}.\n"
        f"- Segmentation: phi (`text_hidden_fcs`) on the last-layer state that predicted `[SEG]` "
        f"(seg_state={m.seg_state}), SAM `{sam_kind}` mask decoder with no dense prompt (RVLS2M off).\n"
        "- LoRA: none (merged into the release); answer format `seg`.\n")
