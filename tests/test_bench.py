"""Benchmarks run end to end at quick sizes and speak JSON lines with a headline last (no timing assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sim4seg import bench

ROOT = Path(__file__).resolve().parents[1]
HEADLINE_KEYS = {"benchmark", "headline", "value", "targets"}
EXTRA_KEYS = {
    "generate": {"tokens_per_s_cached", "tokens_per_s_no_cache", "identical_tokens"},
    "tts": {"tts_over_plain", "seconds_16_passes"},
    "train_step": {"samples_per_s_cache", "samples_per_s_no_cache", "rvls2m_pct_cache",
                   "samples_per_s_cache_qwen2_5_vl", "preset_qwen2_5_vl"},
    "loader": {"ratio_1_worker", "ratio_2_workers", "consumption_samples_per_s"},
    "metrics": {"masks_per_s_ours", "masks_per_s_loop", "identical"},
    "encoder": {"max_abs_diff", "images_per_s_fast", "images_per_s_unmodified", "gflops_fast", "matmul_gflops"},
    "app": {"reading_s", "sam_encoder_s", "generation_s", "decoding_s", "n_seg"},
}


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("name", bench.BENCHMARKS)
def test_benchmark_quick_json(name, capsys):
    records = bench.main([name, "--quick", "--json"])
    out = capsys.readouterr().out
    lines = json_lines(out)  # every stdout line is JSON (the table went to stderr)
    assert lines == records and len(lines) >= 2
    assert all(r["benchmark"] == name for r in lines)
    last = lines[-1]
    assert HEADLINE_KEYS | EXTRA_KEYS[name] <= set(last)
    assert isinstance(last["value"], float) and last["value"] > 0
    assert all(isinstance(t["met"], bool) for t in last["targets"].values()) and last["targets"]
    assert all("headline" not in r for r in lines[:-1])


def test_table_without_json(capsys):
    bench.main(["metrics", "--quick"])
    out = capsys.readouterr().out
    assert "masks/s" in out and ("target met" in out or "target not met" in out)
    with pytest.raises(json.JSONDecodeError):
        json_lines(out)


def test_generate_baseline_matches_cached_tokens():
    """The no-cache loop is a faithful baseline: same greedy tokens as transformers' cached generation."""
    import torch

    from sim4seg.bench.common import build
    from sim4seg.bench.generate import lisa_no_cache_generate, prompt_batch

    _, model, proc = build(["model=tiny", "model.lora.enabled=false"])
    model.eval()
    batch = prompt_batch(model, proc)
    eos = proc.tokenizer.eos_token_id
    with torch.no_grad():
        g = model.generate(batch, max_new_tokens=5, min_new_tokens=5, eos_token_id=eos,
                           pad_token_id=proc.tokenizer.pad_token_id)[0].tokens
    assert g == lisa_no_cache_generate(model.lvlm, batch, 5, [eos])


def test_gpu_check_tiny_in_process(capsys):
    """scripts/gpu_check.py end to end at tiny sizes on the CPU (DeepSpeed ZeRO-2 steps, gc on/off, generation,
    the fast encoder against the library's forward)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    results = gpu_check.main(["--tiny", "--in-process", "--steps", "2", "--gen-tokens", "4"])
    assert [r["config"] for r in results] == ["train_gc_on", "train_gc_off", "generate", "encoder"]
    assert all(r["status"] == "ok" for r in results), results
    assert results[2]["identical_tokens"]
    assert results[3]["encoders"][0]["fast_max_abs_diff"] <= 1e-4
    assert "GPU check summary" in capsys.readouterr().out
