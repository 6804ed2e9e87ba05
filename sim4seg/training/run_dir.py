"""The run directory (``train.output_dir``): what a run may reuse, what a resume may change, and its records.

    config.yaml           the resolved config of the run's first start; never overwritten by a resume
    config_changes.jsonl  settings a resume changed with ``train.allow_config_change=true``, with their step
    run.json              metadata: trainable parameters per group
    metrics.jsonl         written by :class:`sim4seg.training.metrics_log.MetricsLog`
    checkpoints/          DeepSpeed checkpoints (:class:`sim4seg.training.checkpointing.Checkpointer`)
    trainable.safetensors, finished.json (written last, :func:`sim4seg.model.checkpoint.write_finished`)
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sim4seg.errors import UserError
from sim4seg.jsonl import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from sim4seg.model.checkpoint import FINISHED

LATEST = "latest"
CHANGES = "config_changes.jsonl"
# A checkpoint's weights depend on these: a resume with other values cannot continue the run at all.
MODEL_KEYS = ("model.", "rvls2m.")
# Settings that do not shape the optimisation: a resume may change them freely. Everything else (optimizer,
# schedule, length, loss, data selection, answer format, precision) needs train.allow_config_change=true.
FREE_KEYS = ("train.output_dir", "train.resume", "train.allow_config_change", "train.save_every",
             "train.keep_checkpoints", "train.log_every", "train.progress", "train.eval_every",
             "train.eval_max_samples", "train.cache_sam_embeddings", "train.cache_dir", "data.num_workers",
             "data.on_error", "data.max_skip_fraction", "data.val_split", "wandb.")


def flatten(tree: object, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, object] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def _show(changes: dict[str, list]) -> str:
    return ", ".join(f"{k} ({json.dumps(a)} -> {json.dumps(b)})" for k, (a, b) in changes.items())


class RunDir:
    """One run directory. :meth:`prepare` refuses to mix runs; rank 0 writes, every rank checks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.changes = self.path / CHANGES
        self.meta = self.path / "run.json"

    def has_checkpoint(self) -> bool:
        return (self.checkpoints / LATEST).exists()

    def recorded_config(self) -> dict:
        """The run's settings now: config.yaml with every recorded change applied."""
        cfg = OmegaConf.load(self.config)
        if self.changes.exists():
            for change in read_jsonl(self.changes):
                for key, (_, new) in change["changes"].items():
                    OmegaConf.update(cfg, key, new, force_add=True)
        return OmegaConf.to_container(cfg, resolve=True)

    def prepare(self, cfg: DictConfig, rank: int) -> dict[str, list]:
        """Check that ``cfg`` may write here and return the accepted setting changes of a resume
        (``{key: [recorded, now]}``, to be recorded with :meth:`record_changes` once the step is known)."""
        t = cfg.train
        changes: dict[str, list] = {}
        if self.has_checkpoint():
            if not t.resume:
                raise UserError(f"{self.path} already holds checkpoints; set train.resume=true to continue that "
                                "run or choose another train.output_dir")
            if not self.config.exists():
                raise UserError(f"{self.path} holds checkpoints but no config.yaml; choose another "
                                "train.output_dir")
            before = flatten(self.recorded_config())
            now = flatten(OmegaConf.to_container(cfg, resolve=True))
            diff = {k: [before.get(k), now.get(k)] for k in sorted(set(before) | set(now))
                    if before.get(k) != now.get(k) and not _matches(k, FREE_KEYS)}
            model = {k: v for k, v in diff.items() if _matches(k, MODEL_KEYS)}
            if model:
                raise UserError(f"{self.path} holds checkpoints of a run with a different model/rvls2m config: "
                                f"{_show(model)}; resume with the same config or choose another train.output_dir")
            if diff and not t.get("allow_config_change", False):
                raise UserError(f"train.resume=true with changed settings that shape the run: {_show(diff)}; "
                                "resume with the recorded values, or set train.allow_config_change=true to "
                                f"accept the change (recorded in {self.changes})")
            changes = diff
        if rank == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / FINISHED).unlink(missing_ok=True)  # this run is not finished until it writes it again
            if not self.has_checkpoint():  # a new run (or one killed before its first checkpoint)
                self.changes.unlink(missing_ok=True)
                atomic_write_text(self.config, OmegaConf.to_yaml(cfg, resolve=True))
        return changes

    def record_changes(self, step: int, changes: dict[str, list]) -> None:
        """Append the settings a resume changed, with the step it continued from (rank 0 only)."""
        append_jsonl(self.changes, [{"step": step, "changes": changes}])
        print(f"settings changed at step {step}: {_show(changes)} (recorded in {self.changes})")

    def write_meta(self, meta: dict) -> None:
        atomic_write_json(self.meta, meta)

    def interrupted(self) -> str:
        """One line for Ctrl-C: where the run can continue from and the command that does it."""
        args = [a for a in sys.argv[1:] if not a.startswith(("train.resume=", "--local_rank"))]
        command = shlex.join(["python", "-m", "sim4seg.train", *args, "train.resume=true"])
        if not self.has_checkpoint():
            return (f"interrupted before the first checkpoint of {self.path}; nothing to resume: rerun the same "
                    "command to start again")
        tag = (self.checkpoints / LATEST).read_text().strip()
        return f"interrupted; continue from {self.checkpoints / tag} with: {command}"
