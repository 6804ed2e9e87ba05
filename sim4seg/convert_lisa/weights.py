"""The release's tensors, read one file at a time, and the output's safetensors shards, written as they fill."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sim4seg.convert_lisa.names import PARTS, SKIPPED, to_sim4seg
from sim4seg.errors import UserError

_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None


class ReleaseWeights:
    """The tensors of a checkpoint folder (safetensors preferred, else ``pytorch_model*.bin``), one file at a time.

    ``.bin`` shards are memory-mapped (``torch.load(mmap=True, weights_only=True)``; old non-zip pickles are read
    whole, up to the largest shard), safetensors are read tensor by tensor."""

    def __init__(self, src: Path):
        self.src = src
        self.safetensors = bool(list(src.glob("*.safetensors")))
        index = src / ("model.safetensors.index.json" if self.safetensors else "pytorch_model.bin.index.json")
        if index.exists():
            wmap = read_json(index).get("weight_map", {})
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

    def check(self, wanted: set[str], parts: tuple[str, ...] = PARTS) -> None:
        """Strictly LISA's layout for this config: exactly the ``wanted`` keys (skipped buffers aside), among the
        keys of ``parts`` and those of no part (so the LLaVA can be checked before SAM's variant is known)."""
        have = {k for k in self.where if not SKIPPED.match(k) and (to_sim4seg(k) or ("",))[0] in (*parts, "")}
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        if missing or extra:
            hint = (" (only LISA's single-Linear mm_projector is supported)"
                    if any(k.startswith("model.mm_projector.") for k in extra) else "")
            raise UserError(f"{self.src}: weights do not match LISA's layout for its config.json: missing "
                            f"{missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)}){hint}")

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
        """(LISA name, tensor), file by file; a .bin shard's tensors are dropped as they are handed out."""
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


def checked(t: torch.Tensor, shape: tuple[int, ...], key: str, wrong: list[str]) -> torch.Tensor:
    """``t``, noting in ``wrong`` when its shape is not ``shape``."""
    if tuple(t.shape) != tuple(shape):
        wrong.append(f"{key} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def grow_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """[V, H] -> [rows, H]; new rows are the mean row."""
    if t.shape[0] >= rows:
        return t
    mean = t.float().mean(0, keepdim=True).to(t.dtype)
    return torch.cat([t, mean.expand(rows - t.shape[0], -1)])


def disk_names(model: torch.nn.Module, names) -> dict[str, str]:
    """Parameter name -> the name ``save_pretrained`` writes (transformers 5 saves LLaVA in the llava-hf layout)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # no renaming on save in this transformers: the parameter names are the file names
        return {k: k for k in names}
    return {k: next(iter(revert_weight_conversion(model, {k: torch.empty(0)}))) for k in names}


class ShardWriter:
    """``save_pretrained``'s safetensors layout (``model-0000i-of-0000n.safetensors`` + index), written as shards
    fill, so at most one shard of ``limit`` bytes is held in memory."""

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
