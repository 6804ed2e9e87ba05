"""``sim4seg export --ckpt RUN_DIR --out DIR``: a self-contained model directory.

LoRA is merged into the language model; the LVLM is written as a transformers LLaVA directory (safetensors,
config, tokenizer, image processor), SAM as ``sam.safetensors``, phi and the other trained weights as
``trainable.safetensors``, and ``config.yaml`` points the model config at these files, so eval, predict and
``load_run`` take the directory exactly like a run directory. A short model card records the training config
and final metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import save_file

from sim4seg.model.builder import build_model
from sim4seg.model.checkpoint import TRAINABLE, load_run, load_trainable, save_trainable


def export(ckpt: str | Path, out: str | Path) -> Path:
    ckpt, out = Path(ckpt), Path(out).resolve()
    model, proc, cfg = load_run(ckpt)
    lvlm = model.lvlm.merge_and_unload() if cfg.model.lora.enabled else model.lvlm
    (out / "lvlm").mkdir(parents=True, exist_ok=True)
    lvlm.save_pretrained(out / "lvlm")
    proc.tokenizer.save_pretrained(out / "lvlm")
    proc.image_processor.save_pretrained(out / "lvlm")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.sam.state_dict().items()}, str(out / "sam.safetensors"))

    exported = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    exported.model.lvlm.kind = "pretrained"
    exported.model.lvlm.path = str(out / "lvlm")
    exported.model.sam.checkpoint = str(out / "sam.safetensors")
    exported.model.lora.enabled = False  # merged
    (out / "config.yaml").write_text(OmegaConf.to_yaml(exported))

    # Rebuild from the exported files and copy the trained weights that live outside the LVLM (phi, decoder).
    rebuilt, _ = build_model(exported.model, exported.rvls2m, exported.loss)
    own = dict(rebuilt.named_parameters())
    for name, p in model.named_parameters():
        if name.startswith(("text_hidden_fcs", "sam.")):
            own[name].data.copy_(p.data)
    save_trainable(rebuilt, out / TRAINABLE)
    load_trainable(rebuilt, out / TRAINABLE)  # fail here, not at the user's first eval, if anything is off

    metrics = []
    if (ckpt / "metrics.jsonl").exists():
        metrics = [json.loads(x) for x in (ckpt / "metrics.jsonl").read_text().splitlines() if x]
    final = next((m for m in reversed(metrics) if m.get("final")), {})
    (out / "README.md").write_text(
        f"# Sim4Seg model exported from `{ckpt}`\n\nPreset `{cfg.model.name}`, answer format "
        f"`{cfg.data.answer_format}`, RVLS2M {'on' if cfg.rvls2m.enabled else 'off'} (g={cfg.rvls2m.grid}, "
        f"k={cfg.rvls2m.k}), seg_state `{cfg.model.seg_state}`, LoRA merged.\n\nFinal training record: "
        f"`{json.dumps(final)}`\n\nLoad with `python -m sim4seg.eval ckpt={out}` or "
        f"`sim4seg predict --ckpt {out} ...`.\n\n## Training config\n\n```yaml\n{OmegaConf.to_yaml(cfg)}```\n")
    return out
