"""On-disk cache of frozen SAM image embeddings, so repeated epochs skip the image encoder.

Keys hash the preprocessed SAM input together with the encoder's identity (a hash of its weights), so runs
with the same encoder share entries and a different encoder never reads them. Writes are atomic (temporary
file + rename): concurrent runs and interrupted writes leave either a whole entry or none.

Size: one 64 x 64 x 256 embedding (SAM ViT-H, LiteMedSAM) is 4.2 MB in float32, 2.1 MB in float16 (``dtype``:
``train.cache_dtype`` / eval's ``cache_dtype``). float16 entries live in their own folder, and a freshly encoded
image is rounded the same way, so results never depend on whether an entry was already there.

An entry is the decoder family's image embedding, one tensor per image: SAM's [P, E, E], SAM2's packed
[4P, E, E] (its coarse embedding and both high-resolution maps, see :mod:`sim4seg.model.sam2`; 16.8 MB in float32
at 1024 px), so both families cache the same way. A training run whose image encoder trains (SAM2's encoder LoRA)
gets no cache (:func:`training_cache`): its embeddings change at every step.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sim4seg.errors import UserError

STORAGE = {"float32": torch.float32, "float16": torch.float16}


def module_fingerprint(module: nn.Module) -> str:
    # The class too: the fast encoder (sim4seg.model.fast_encoder) has the same weights but not bit-identical outputs.
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class EmbeddingCache:
    def __init__(self, directory: str | Path, encoder: nn.Module, dtype: str = "float32"):
        if dtype not in STORAGE:
            raise UserError(f"cache_dtype={dtype!r}: use one of {', '.join(STORAGE)} (float16 halves the disk)")
        self.encoder = encoder
        self.storage = STORAGE[dtype]
        self.dir = Path(directory) / (module_fingerprint(encoder) + ("" if dtype == "float32" else f"-{dtype}"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def key(self, sam_image: torch.Tensor) -> str:
        return hashlib.sha256(sam_image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

    @torch.no_grad()
    def __call__(self, sam_images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, P, E, E], reading cached entries and encoding only the missing images."""
        keys = [self.key(x) for x in sam_images]
        out: list[torch.Tensor | None] = []
        for k in keys:
            path = self.dir / f"{k}.safetensors"
            out.append(load_file(str(path))["e"] if path.exists() else None)
        missing = [i for i, e in enumerate(out) if e is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        dev = next(self.encoder.parameters()).device
        dtype = next(self.encoder.parameters()).dtype
        if missing:
            new = self.encoder(sam_images[missing].to(dev, dtype)).to(self.storage)
            for i, e in zip(missing, new):
                out[i] = e
                self._write(keys[i], e)
        return torch.stack([e.to(sam_images.device, dtype) for e in out])

    def _write(self, key: str, e: torch.Tensor) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        os.close(fd)
        save_file({"e": e.detach().cpu().contiguous()}, tmp)
        os.replace(tmp, self.dir / f"{key}.safetensors")


def training_cache(directory: str | Path, encoder: nn.Module, dtype: str = "float32",
                   log: bool = True) -> EmbeddingCache | None:
    """The cache of a training run, or None (and one line saying so, if ``log``) when the encoder trains."""
    if any(p.requires_grad for p in encoder.parameters()):
        if log:
            print("SAM embedding cache off: the image encoder trains (model.sam.train_encoder=true), so its "
                  "embeddings change at every step (train.cache_sam_embeddings is ignored)")
        return None
    return EmbeddingCache(directory, encoder, dtype)
