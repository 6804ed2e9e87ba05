"""On-disk cache of frozen SAM image embeddings, so repeated epochs skip the image encoder.

Keys hash the preprocessed SAM input together with the encoder's identity (a hash of its weights), so runs
with the same encoder share entries and a different encoder never reads them. Writes are atomic (temporary
file + rename): concurrent runs and interrupted writes leave either a whole entry or none.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def module_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class EmbeddingCache:
    def __init__(self, directory: str | Path, encoder: nn.Module):
        self.encoder = encoder
        self.dir = Path(directory) / module_fingerprint(encoder)
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
        if missing:
            dev = next(self.encoder.parameters()).device
            dtype = next(self.encoder.parameters()).dtype
            new = self.encoder(sam_images[missing].to(dev, dtype))
            for i, e in zip(missing, new):
                out[i] = e
                self._write(keys[i], e)
        return torch.stack([e.to(sam_images.device) for e in out])

    def _write(self, key: str, e: torch.Tensor) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        os.close(fd)
        save_file({"e": e.detach().cpu().contiguous()}, tmp)
        os.replace(tmp, self.dir / f"{key}.safetensors")
