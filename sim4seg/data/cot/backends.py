"""A backend SPEC string -> a :class:`~sim4seg.data.cot.chat.Backend`:

- ``hf:/path/to/model-dir``: a local LLaVA- or Qwen2.5-VL-format transformers model (:mod:`.hf_backend`);
- ``openai:http://host:port/v1#model-name``: an OpenAI-compatible endpoint (:mod:`.openai_backend`).
"""

from __future__ import annotations

from sim4seg.data.cot.chat import Backend, redact
from sim4seg.data.cot.openai_backend import OpenAIBackend
from sim4seg.errors import UserError


def make_backend(spec: str, max_new_tokens: int = 256, temperature: float = 0.0, timeout: float = 120.0,
                 device: str | None = None, trust_remote_code: bool = False, concurrency: int = 8) -> Backend:
    """``hf:PATH`` or ``openai:URL[#model]`` -> a :class:`Backend` (the hf model is loaded here)."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise UserError(f"backend spec {redact(spec)!r}: use hf:/path/to/model-dir or openai:http://host:port/v1#model")
    if kind == "hf":
        from sim4seg.data.cot.hf_backend import HFBackend  # transformers: only when a local model is asked for

        return HFBackend(rest, max_new_tokens, temperature, device, trust_remote_code)
    if kind == "openai":
        url, _, model = rest.partition("#")
        return OpenAIBackend(url, model or None, max_new_tokens, temperature, timeout, concurrency)
    raise UserError(f"backend spec {redact(spec)!r}: unknown kind {kind!r} (hf or openai)")
