"""``sim4seg convert-lisa --src LISA_DIR --clip CLIP_DIR --out DIR``: a released LISA checkpoint as a Sim4Seg model.

LISA-7B-v1 / LISA-13B-llama2-v1 (and Sim4Seg releases in LISA's format) are HF-style folders in LLaVA-v1 layout:
``config.json``, the LLaMA tokenizer with ``[SEG]``, ``<im_start>``, ``<im_end>`` added, and weights named

    model.embed_tokens.weight, model.layers.*, model.norm.weight, lm_head.weight      LLaMA
    model.mm_projector.{weight,bias}                                                  one Linear, CLIP -> H
    model.text_hidden_fcs.0.{0,2}.{weight,bias}                                        phi: Linear, ReLU, Linear
    model.visual_model.{image_encoder,prompt_encoder,mask_decoder}.*                  SAM

The CLIP tower is not in the release; it comes from a local ``clip-vit-large-patch14`` folder. The output is a
directory that ``load_run`` (eval, predict) takes like a run directory:

    DIR/lvlm/                  transformers LlavaForConditionalGeneration (safetensors), tokenizer, CLIP processor
    DIR/sam.safetensors        the SAM state dict (image_encoder.*, prompt_encoder.*, mask_decoder.*)
    DIR/config.yaml            configs/train.yaml with model=lisa_7b, filled in for this checkpoint
    DIR/trainable.safetensors  what the config trains (phi, mask decoder, lm_head, embed_tokens)
    DIR/README.md              model card

Exactness: LISA's single-Linear projector is transformers' two-layer projector with ``projector_hidden_act=linear``
(identity), ``linear_1`` = LISA's projector and ``linear_2`` = identity with zero bias; ``<image>`` is added to the
tokenizer (its embedding row is only ever replaced by image features; the new lm_head row is the mean row); CLIP
features are layer -2 without CLS; the [SEG] state is the one that predicted [SEG]. Weight dtypes are kept.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from segment_anything import sam_model_registry
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from sim4seg.data.prompts import IMAGE_TOKEN, SEG_TOKEN, SYSTEM
from sim4seg.errors import UserError
from sim4seg.model.builder import DTYPES, build_model
from sim4seg.model.checkpoint import TRAINABLE, load_trainable, save_trainable
from sim4seg.model.sam import SAM_BUILDERS

IM_START, IM_END = "<im_start>", "<im_end>"
SAM_PREFIX = "model.visual_model."
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
PHI = {"model.text_hidden_fcs.0.0.weight": "0.weight", "model.text_hidden_fcs.0.0.bias": "0.bias",
       "model.text_hidden_fcs.0.2.weight": "2.weight", "model.text_hidden_fcs.0.2.bias": "2.bias"}
# Derived buffers that old transformers versions saved with LLaMA; recomputed by the model, so skipped.
SKIPPED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
# SAM image-encoder width -> (variant, depth) of segment_anything's official models.
SAM_VARIANTS = {1280: ("vit_h", 32), 1024: ("vit_l", 24), 768: ("vit_b", 12)}
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}  # LLaVA-v1's mm_vision_select_feature -> transformers
SHARD_BYTES = 2 * 1024**3


def convert_lisa(src: str | Path, clip: str | Path, out: str | Path, name: str | None = None,
                 sam: str | Mapping = "auto", dtype: str = "auto", shard_bytes: int = SHARD_BYTES) -> Path:
    """Convert the LISA-format checkpoint ``src`` (with the CLIP tower from ``clip``) into the model directory ``out``.

    sam: ``auto`` (the SAM variant from the image encoder's width and depth: 1280/32 vit_h, 1024/24 vit_l,
    768/12 vit_b), a variant name (checked against the weights), or a full ``model.sam`` mapping for SAM kinds of
    the registry beyond segment_anything's (e.g. ``{"kind": "tiny", "img_size": 64, ...}`` in tests; the
    checkpoint is filled in). dtype: ``auto`` keeps the dtype of the release (LISA: bfloat16), else float32 /
    bfloat16 / float16. name: only the model card's title (default: the folder name of ``src``).

    Every key of the release must be one LISA's layout expects and every expected key must be there (UserError
    naming them otherwise; ``rotary_emb.inv_freq`` buffers of old LLaMA saves are skipped).

    Memory: the weights stream file by file. ``.bin`` shards are memory-mapped (``torch.load(mmap=True,
    weights_only=True)``; old non-zip pickles are read whole, up to the largest shard, ~10 GB for LISA-7B-v1),
    safetensors tensor by tensor; output shards of ``shard_bytes`` (2 GB) are written as they fill, and SAM
    (~1.3 GB in bf16 for ViT-H) and phi stay in memory. The final check rebuilds the model from ``out`` as
    ``load_run`` does, and that dominates: ~14 GB (7B, bf16) / ~26 GB (13B) for the LLaVA plus ~2.5 GB while SAM
    ViT-H is built in float32, so plan ~17 GB (7B) / ~30 GB (13B) of RAM, the same as evaluating the model.
    Disk: about the size of the release plus CLIP (~0.6 GB) and ``trainable.safetensors`` (~0.6 GB for 7B).
    """
    src, clip, out = Path(src).resolve(), Path(clip).resolve(), Path(out).resolve()
    _check_dirs(src, clip, out)
    existed = out.exists()
    try:
        return _convert(src, clip, out, name, sam, dtype, shard_bytes)
    except BaseException:  # leave no half-written model behind (out was absent or empty)
        if out.exists():
            shutil.rmtree(out)
            if existed:
                out.mkdir()
        raise


def _convert(src: Path, clip: Path, out: Path, name: str | None, sam: str | Mapping, dtype: str,
             shard_bytes: int) -> Path:
    lisa = _read_json(src / "config.json")
    weights = _Weights(src)
    weights.check_known()

    # ---- what the release must contain ------------------------------------------------------------------
    use_start_end = lisa.get("mm_use_im_start_end")
    tok, image_id = _tokenizer(src, use_start_end)
    if use_start_end is None:  # not recorded: LISA wraps the image when its tokenizer has the tokens
        use_start_end = all(t in tok.get_vocab() for t in (IM_START, IM_END))
    vision, improc = _clip_config(clip)
    embed_shape, src_dtype = weights.meta("model.embed_tokens.weight")
    dtype = _dtype(dtype, src_dtype)
    rows = max(embed_shape[0], len(tok))
    if image_id >= rows:
        raise UserError(f"{src}: the tokenizer has {len(tok)} tokens but the embeddings only {embed_shape[0]} rows")
    conf = _llava_config(lisa, vision, tok, image_id, rows, dtype)
    with torch.device("meta"):
        meta = LlavaForConditionalGeneration(conf)
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    disk_names = _disk_names(meta, expected)
    del meta

    cfg = _compose()
    cfg.model.sam = OmegaConf.merge(cfg.model.sam, _sam_settings(sam, weights),
                                    {"checkpoint": str(out / "sam.safetensors")})
    sam_shapes = _sam_shapes(cfg.model.sam)
    hidden, prompt_dim = conf.text_config.hidden_size, sam_shapes["prompt_encoder.no_mask_embed.weight"][1]
    phi_shapes = {"0.weight": (hidden, hidden), "0.bias": (hidden,), "2.weight": (prompt_dim, hidden),
                  "2.bias": (prompt_dim,)}
    wanted = {_lisa_name(k) for k in expected if _lisa_name(k)} | set(PHI) | {SAM_PREFIX + k for k in sam_shapes}
    weights.check_complete(wanted)

    # ---- the LLaVA directory, file by file ------------------------------------------------------------------
    lvlm_dir = out / "lvlm"
    lvlm_dir.mkdir(parents=True)
    writer = _ShardWriter(lvlm_dir, shard_bytes)
    sam_state, phi, wrong, seen = {}, {}, [], set()
    for key, t in weights.tensors():
        seen.add(key)
        native, sub = _native_name(key), key[len(SAM_PREFIX):]
        if key in PHI:
            phi[PHI[key]] = _checked(t, phi_shapes[PHI[key]], key, wrong)
        elif key.startswith(SAM_PREFIX) and sub in sam_shapes:
            sam_state[sub] = _checked(t, sam_shapes[sub], key, wrong)
        elif native in expected:
            if native in ("lm_head.weight", "model.language_model.embed_tokens.weight"):
                t = _grow(t, rows)  # the <image> row(s): the mean row
            writer.add(disk_names[native], _checked(t, expected[native], key, wrong).to(dtype))
        else:  # the index did not list it
            wrong.append(f"{key} is unexpected")
        if len(wrong) >= 3:
            break
    if not wrong and wanted - seen:
        wrong.append(f"missing {sorted(wanted - seen)[:5]} (listed in the index, not in the files)")
    if wrong:
        raise UserError(f"{src}: weights do not fit the model its config.json describes: {'; '.join(wrong)}")
    hidden_eye = torch.eye(hidden, dtype=dtype)
    writer.add(disk_names["model.multi_modal_projector.linear_2.weight"], hidden_eye)
    writer.add(disk_names["model.multi_modal_projector.linear_2.bias"], torch.zeros(hidden, dtype=dtype))
    tower = _clip_tower(clip, dtype)
    vt = {"model.vision_tower." + k: v for k, v in tower.state_dict().items()}
    want_vt = {k for k in expected if k.startswith("model.vision_tower.")}
    if set(vt) != want_vt:
        raise UserError(f"{clip}: the CLIP vision weights do not fit transformers' LLaVA vision tower: missing "
                        f"{sorted(want_vt - set(vt))[:3]}, unexpected {sorted(set(vt) - want_vt)[:3]}")
    for k, v in vt.items():
        writer.add(disk_names[k], _checked(v, expected[k], f"{clip}: {k}", wrong).contiguous())
    if wrong:
        raise UserError(f"{clip}: CLIP weights do not fit its config: {'; '.join(wrong)}")
    del tower, vt
    shards = writer.finish()
    conf.save_pretrained(lvlm_dir)
    tok.save_pretrained(lvlm_dir)
    improc.save_pretrained(lvlm_dir)
    save_file({k: v.to(dtype).contiguous() for k, v in sam_state.items()}, str(out / "sam.safetensors"))

    # ---- config.yaml, then rebuild as load_run does, check, and write the trained weights -------------------
    m = cfg.model
    m.dtype = _dtype_name(dtype)
    m.lvlm.path = str(lvlm_dir)
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
    _verify(model, proc, shards, sam_state, dtype, image_id, tok)
    model.text_hidden_fcs.load_state_dict({k: v.to(dtype) for k, v in phi.items()})
    save_trainable(model, out / TRAINABLE)
    load_trainable(model, out / TRAINABLE)
    del model
    _model_card(out, cfg, tok, image_id, rows - embed_shape[0], n_image=proc.n_image_tokens,
                crop=improc.crop_size, sam_kind=cfg.model.sam.kind)
    return out


def cmd_convert_lisa(args) -> int:
    """The ``sim4seg convert-lisa`` command."""
    out = convert_lisa(args.src, args.clip, args.out, args.name, args.sam_variant, args.dtype)
    print(f"converted {args.src} to {out}\nuse it with: python -m sim4seg.eval ckpt={out} ... | "
          f"sim4seg predict --ckpt {out} ...")
    return 0


# ---- the release's files ---------------------------------------------------------------------------------------
class _Weights:
    """The tensors of a checkpoint folder (safetensors preferred, else ``pytorch_model*.bin``), one file at a time."""

    def __init__(self, src: Path):
        self.src = src
        self.safetensors = bool(list(src.glob("*.safetensors")))
        index = src / ("model.safetensors.index.json" if self.safetensors else "pytorch_model.bin.index.json")
        if index.exists():
            wmap = _read_json(index).get("weight_map", {})
            self.files = sorted({src / f for f in wmap.values()})
            self.where = {k: src / f for k, f in wmap.items()}
        else:
            self.files = sorted(src.glob("*.safetensors" if self.safetensors else "pytorch_model*.bin"))
            self.where = {k: f for f in self.files for k in self._keys(f)}
        if not self.files:
            raise UserError(f"{src}: no weights (*.safetensors or pytorch_model*.bin); pass a LISA release folder")
        for f in self.files:
            if not f.exists():
                raise UserError(f"{index}: lists {f.name}, which is not in {src}")
        self._cache: tuple[Path, dict] | None = None

    def _keys(self, f: Path) -> list[str]:
        if self.safetensors:
            with safe_open(str(f), "pt") as s:
                return list(s.keys())
        return list(self._load_bin(f))

    def _load_bin(self, f: Path) -> dict[str, torch.Tensor]:
        try:
            try:
                state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a pre-zip pickle cannot be memory-mapped: read it whole
                state = torch.load(f, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError) as e:
            raise UserError(f"{f}: not a plain weights file ({str(e).splitlines()[0]})") from None
        if not isinstance(state, dict):
            raise UserError(f"{f}: holds a {type(state).__name__}, not a state dict")
        return state

    def check_known(self) -> None:
        unknown = sorted(k for k in self.where if not _known(k))
        if unknown:
            hint = (" (only LISA's single-Linear mm_projector is supported)"
                    if any(k.startswith("model.mm_projector.") for k in unknown) else "")
            raise UserError(f"{self.src}: unexpected weights for LISA's layout: {', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''} ({len(unknown)} keys){hint}")

    def check_complete(self, wanted: set[str]) -> None:
        have = {k for k in self.where if not SKIPPED.match(k)}
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        if missing or extra:
            raise UserError(f"{self.src}: weights do not match LISA's layout for its config.json: missing "
                            f"{missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)})")

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of one tensor, reading as little as possible."""
        if key not in self.where:
            raise UserError(f"{self.src}: weights do not match LISA's layout: missing {key}")
        f = self.where[key]
        if self.safetensors:
            with safe_open(str(f), "pt") as s:
                t = s.get_slice(key)
                return tuple(t.get_shape()), _ST_DTYPES[t.get_dtype()]
        if self._cache is None or self._cache[0] != f:
            self._cache = (f, self._load_bin(f))
        t = self._cache[1][key]
        return tuple(t.shape), t.dtype

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        self._cache = None
        for f in self.files:
            if self.safetensors:
                with safe_open(str(f), "pt") as s:
                    for k in s.keys():
                        if not SKIPPED.match(k):
                            yield k, s.get_tensor(k)
            else:
                state = self._load_bin(f)
                for k in list(state):
                    t = state.pop(k)
                    if not SKIPPED.match(k):
                        yield k, t
                del state


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def _known(key: str) -> bool:
    return (key in PHI or bool(SKIPPED.match(key)) or _native_name(key) is not None
            or (key.startswith(SAM_PREFIX) and key[len(SAM_PREFIX):].startswith(SAM_PARTS)))


def _native_name(key: str) -> str | None:
    """LISA's name of a LLaMA / projector weight -> transformers' LlavaForConditionalGeneration parameter name."""
    if key == "lm_head.weight":
        return key
    if key in ("model.mm_projector.weight", "model.mm_projector.bias"):
        return "model.multi_modal_projector.linear_1." + key.rsplit(".", 1)[1]
    if key.startswith(("model.layers.", "model.norm.")) or key == "model.embed_tokens.weight":
        return "model.language_model." + key[len("model."):]
    return None


def _lisa_name(native: str) -> str | None:
    """Inverse of :func:`_native_name`; None for what the release does not hold (CLIP tower, projector linear_2)."""
    if native == "lm_head.weight":
        return native
    if native.startswith("model.multi_modal_projector.linear_1."):
        return "model.mm_projector." + native.rsplit(".", 1)[1]
    if native.startswith("model.language_model."):
        return "model." + native[len("model.language_model."):]
    return None


def _disk_names(model: LlavaForConditionalGeneration, names) -> dict[str, str]:
    """Parameter name -> the name ``save_pretrained`` writes (transformers 5 saves LLaVA in the llava-hf layout)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # no renaming on save in this transformers: the parameter names are the file names
        return {k: k for k in names}
    return {k: next(iter(revert_weight_conversion(model, {k: torch.empty(0)}))) for k in names}


def _check_dirs(src: Path, clip: Path, out: Path) -> None:
    if not (src / "config.json").is_file():
        raise UserError(f"--src {src}: no config.json there; pass a LISA release folder (e.g. LISA-7B-v1)")
    if not clip.is_dir():
        raise UserError(f"--clip {clip} does not exist; pass a local clip-vit-large-patch14 folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; remove it or choose another folder")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None


def _dtype(name: str, src_dtype: torch.dtype) -> torch.dtype:
    if name == "auto":
        return src_dtype if src_dtype in DTYPES.values() else torch.float32
    if name not in DTYPES:
        raise UserError(f"dtype={name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def _tokenizer(src: Path, use_start_end: bool | None):
    """LISA's tokenizer with ``<image>`` added (when absent) -> (tokenizer, id of <image>)."""
    try:
        tok = AutoTokenizer.from_pretrained(str(src), use_fast=True)
    except (OSError, ValueError, ImportError, TypeError) as e:
        raise UserError(f"{src}: cannot load the tokenizer ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                        ) from None
    vocab = tok.get_vocab()
    need = [SEG_TOKEN] + ([IM_START, IM_END] if use_start_end else [])
    missing = [t for t in need if t not in vocab]
    if missing:
        raise UserError(f"{src}: the tokenizer lacks {', '.join(missing)}; a LISA release adds [SEG] (and "
                        "<im_start>, <im_end>) to the LLaMA tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token
    if IMAGE_TOKEN not in vocab:
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    after = tok.get_vocab()
    if any(after[t] != vocab[t] for t in need):
        raise UserError(f"{src}: adding {IMAGE_TOKEN} changed the ids of LISA's tokens")
    return tok, after[IMAGE_TOKEN]


def _clip_config(clip: Path) -> tuple[CLIPVisionConfig, CLIPImageProcessor]:
    try:
        vision = CLIPVisionConfig.from_pretrained(str(clip))
        improc = CLIPImageProcessor.from_pretrained(str(clip))
    except (OSError, ValueError) as e:
        raise UserError(f"--clip {clip}: not a CLIP folder with config.json and preprocessor_config.json "
                        f"({str(e).splitlines()[0]})") from None
    crop = improc.crop_size or {}
    if not improc.do_center_crop or crop.get("height") != vision.image_size or crop.get("width") != vision.image_size:
        raise UserError(f"--clip {clip}: the image processor must center-crop to the tower's {vision.image_size} px "
                        f"(LISA's CLIP view); it has do_center_crop={improc.do_center_crop}, crop_size={crop}")
    return vision, improc


def _clip_tower(clip: Path, dtype: torch.dtype) -> CLIPVisionModel:
    try:
        tower, info = CLIPVisionModel.from_pretrained(str(clip), dtype=dtype, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"--clip {clip}: cannot load the CLIP vision weights ({str(e).splitlines()[0]})") from None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise UserError(f"--clip {clip}: CLIP vision weights missing or of other shapes: "
                        f"{sorted(info.get('missing_keys') or [])[:3]} {list(info.get('mismatched_keys') or [])[:3]}")
    return tower


def _llava_config(lisa: dict, vision: CLIPVisionConfig, tok, image_id: int, rows: int,
                  dtype: torch.dtype) -> LlavaConfig:
    """transformers' LLaVA config from LISA's config.json (LLaMA fields at the top level, mm_* for the vision side)."""
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    absent = [k for k in need if k not in lisa]
    if absent:
        raise UserError(f"config.json of the release lacks {', '.join(absent)}")
    if lisa.get("rope_scaling"):
        raise UserError(f"config.json: rope_scaling={lisa['rope_scaling']} is not supported (LISA has none)")
    if lisa.get("mm_projector_type", "linear") != "linear":
        raise UserError(f"config.json: mm_projector_type={lisa['mm_projector_type']!r}; only LISA's single Linear "
                        "projector is supported")
    feature = lisa.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE:
        raise UserError(f"config.json: mm_vision_select_feature={feature!r}: use one of {', '.join(SELECT_FEATURE)}")
    names = ("num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
             "attention_bias")
    text = LlamaConfig(vocab_size=rows, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       **{k: lisa[k] for k in need + names if lisa.get(k) is not None})
    conf = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                       image_seq_length=(vision.image_size // vision.patch_size) ** 2, projector_hidden_act="linear",
                       vision_feature_layer=int(lisa.get("mm_vision_select_layer", -2)),
                       vision_feature_select_strategy=SELECT_FEATURE[feature], multimodal_projector_bias=True,
                       tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    conf.architectures = ["LlavaForConditionalGeneration"]
    conf.dtype = dtype
    return conf


def _compose() -> DictConfig:
    """configs/train.yaml with ``model=lisa_7b`` (Hydra's composition, as ``sim4seg.train`` sees it)."""
    from sim4seg.config import compose

    cfg = compose("train", ["model=lisa_7b"])
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))


def _sam_settings(sam: str | Mapping, weights: _Weights) -> dict:
    if isinstance(sam, Mapping):
        settings = dict(sam)
        if settings.get("kind") not in SAM_BUILDERS:
            raise UserError(f"sam kind {settings.get('kind')!r} is unknown; choose one of {', '.join(SAM_BUILDERS)}")
        return settings
    official = [v for v, _ in SAM_VARIANTS.values()]
    if sam != "auto" and sam not in official:
        raise UserError(f"--sam-variant {sam!r}: use auto, {', '.join(official)}")
    (width, *_), _ = weights.meta(SAM_PREFIX + "image_encoder.patch_embed.proj.weight")
    blocks = {int(m.group(1)) for k in weights.where
              if (m := re.match(re.escape(SAM_PREFIX) + r"image_encoder\.blocks\.(\d+)\.", k))}
    found = SAM_VARIANTS.get(width)
    if sam == "auto":
        if found is None or found[1] != len(blocks):
            raise UserError(f"the SAM image encoder (width {width}, {len(blocks)} blocks) is none of vit_h (1280, 32), "
                            "vit_l (1024, 24), vit_b (768, 12)")
        sam = found[0]
    elif found is None or found[0] != sam or found[1] != len(blocks):
        raise UserError(f"--sam-variant {sam}: the SAM image encoder has width {width} and {len(blocks)} blocks, "
                        f"which is {found[0] if found else 'no official variant'}")
    return {"kind": sam}


def _sam_shapes(sam_cfg: DictConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the SAM that ``model.sam`` builds (on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        if sam_cfg.kind in sam_model_registry and sam_cfg.kind != "default":
            model = sam_model_registry[sam_cfg.kind](checkpoint=None)
        else:
            model = SAM_BUILDERS[sam_cfg.kind](OmegaConf.merge(sam_cfg, {"checkpoint": None}))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _checked(t: torch.Tensor, shape: tuple[int, ...], key: str, wrong: list[str]) -> torch.Tensor:
    if tuple(t.shape) != tuple(shape):
        wrong.append(f"{key} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def _grow(t: torch.Tensor, rows: int) -> torch.Tensor:
    """[V, H] -> [rows, H]; new rows are the mean row."""
    if t.shape[0] >= rows:
        return t
    mean = t.float().mean(0, keepdim=True).to(t.dtype)
    return torch.cat([t, mean.expand(rows - t.shape[0], -1)])


class _ShardWriter:
    """``save_pretrained``'s safetensors layout (``model-0000i-of-0000n.safetensors`` + index), written as shards fill."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.parts: list[tuple[Path, list[str]]] = []
        self.buf: dict[str, torch.Tensor] = {}
        self.size = self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self.buf and self.size + n > self.limit:
            self._flush()
        self.buf[name] = t.contiguous()
        self.size += n
        self.total += n

    def _flush(self) -> None:
        path = self.folder / f".part{len(self.parts):05d}.safetensors"
        save_file(self.buf, str(path), metadata={"format": "pt"})
        self.parts.append((path, list(self.buf)))
        self.buf, self.size = {}, 0

    def finish(self) -> list[Path]:
        if self.buf:
            self._flush()
        n, files, wmap = len(self.parts), [], {}
        for i, (path, keys) in enumerate(self.parts):
            final = self.folder / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.replace(final)
            files.append(final)
            wmap.update(dict.fromkeys(keys, final.name))
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(wmap.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return files


def _verify(model, proc, shards: list[Path], sam_state: dict, dtype: torch.dtype, image_id: int, tok) -> None:
    """The rebuilt model holds exactly what was written (transformers random-initialises what it cannot match)."""
    lvlm = model.lvlm
    state = lvlm.state_dict()
    on_disk = {disk: k for k, disk in _disk_names(lvlm, state).items()}
    bad = []
    for f in shards:
        with safe_open(str(f), "pt") as s:
            for k in s.keys():
                native = on_disk.get(k, k)
                if native not in state or not torch.equal(state[native], s.get_tensor(k)):
                    bad.append(k)
    own_sam = model.sam.state_dict()
    bad += ["sam." + k for k, v in sam_state.items() if not torch.equal(own_sam[k], v.to(dtype))]
    if bad:
        raise UserError(f"the converted model does not load back as written: {bad[:3]} ({len(bad)} tensors)")
    got = proc.tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, SEG_TOKEN])
    if got != [image_id, tok.convert_tokens_to_ids(SEG_TOKEN)] or lvlm.config.image_token_index != image_id:
        raise UserError(f"the converted model's {IMAGE_TOKEN}/{SEG_TOKEN} ids {got} differ from the conversion's")


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
        f"- Prompt: LLaVA-v1 template (system: \"{SYSTEM}\"), image tokens wrapped in "
        f"`{m.image_start}` ... `{m.image_end}`; {n_image} image tokens from CLIP at "
        f"{crop.get('height')} px, center crop (CLIP image processor), layer -2 without CLS.\n"
        f"- Tokens: {ids}; `{IMAGE_TOKEN}`={image_id}"
        f"{f' (added: {added_rows} new embedding row(s), set to the mean row)' if added_rows else ''}.\n"
        f"- Segmentation: phi (`text_hidden_fcs`) on the last-layer state that predicted `[SEG]` "
        f"(seg_state={m.seg_state}), SAM `{sam_kind}` mask decoder with no dense prompt (RVLS2M off).\n"
        "- LoRA: none (merged into the release); answer format `seg`.\n")
