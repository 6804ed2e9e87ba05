"""``sim4seg export --ckpt RUN_DIR --out DIR``: a self-contained model directory that can be copied or moved.

LoRA is merged into the language model; the LVLM is written as a transformers LLaVA directory (safetensors,
config, tokenizer, image processor) in ``lvlm/``, SAM as ``sam.safetensors``, phi and the other trained weights
as ``trainable.safetensors``, and ``finished.json`` is copied from the run, so eval, predict and ``load_run`` take
the directory exactly like a run directory. ``config.yaml`` names the export's own files relative to the
directory (:func:`sim4seg.model.checkpoint.load_run` resolves them against it), so the folder works from any
place. Files get the mode the user's umask gives (safetensors writes 0600 of its own). A short model card
records the training config and final metrics.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import save_file

from sim4seg.model.builder import build_model
from sim4seg.model.checkpoint import (
    FINISHED,
    TRAINABLE,
    load_run,
    load_trainable,
    require_finished,
    resolve_run_paths,
    save_trainable,
)

LVLM_DIR, SAM_FILE = "lvlm", "sam.safetensors"


def export(ckpt: str | Path, out: str | Path) -> Path:
    ckpt, out = Path(ckpt), Path(out).resolve()
    require_finished(ckpt)
    model, proc, cfg = load_run(ckpt)
    lvlm = model.lvlm.merge_and_unload() if cfg.model.lora.enabled else model.lvlm
    (out / LVLM_DIR).mkdir(parents=True, exist_ok=True)
    lvlm.save_pretrained(out / LVLM_DIR)
    proc.tokenizer.save_pretrained(out / LVLM_DIR)
    proc.image_processor.save_pretrained(out / LVLM_DIR)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.sam.state_dict().items()}, str(out / SAM_FILE))

    exported = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    exported.model.lvlm.kind = "pretrained"
    exported.model.lvlm.path = LVLM_DIR  # relative to the export: it moves with it
    exported.model.sam.checkpoint = SAM_FILE
    exported.model.lora.enabled = False  # merged
    (out / "config.yaml").write_text(OmegaConf.to_yaml(exported))

    # Rebuild from the exported files and copy the trained weights that live outside the LVLM (phi, decoder).
    here = resolve_run_paths(exported, out)
    rebuilt, _ = build_model(here.model, here.rvls2m, here.loss)
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
        f"# Sim4Seg model exported from `{ckpt.resolve()}`\n\nPreset `{cfg.model.name}`, answer format "
        f"`{cfg.data.answer_format}`, RVLS2M {'on' if cfg.rvls2m.enabled else 'off'} (g={cfg.rvls2m.grid}, "
        f"k={cfg.rvls2m.k}), seg_state `{cfg.model.seg_state}`, LoRA merged.\n\nFinal training record: "
        f"`{json.dumps(final)}`\n\nThis folder is self-contained and can be moved. Load it with "
        "`python -m sim4seg.eval ckpt=THIS_FOLDER ...` or `sim4seg predict --ckpt THIS_FOLDER ...`.\n\n"
        f"## Training config\n\n```yaml\n{OmegaConf.to_yaml(cfg)}```\n")
    shutil.copyfile(ckpt / FINISHED, out / FINISHED)  # last: an interrupted export is not a finished run
    _follow_umask(out)
    return out


def _follow_umask(root: Path) -> None:
    """Give every file the mode a plain ``open()`` gives (0666 less the umask): safetensors creates its files
    0600, which colleagues on a shared disk cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
