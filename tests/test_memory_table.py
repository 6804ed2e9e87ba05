"""scripts/memory_table.py (issue 14.5): the models built from the published configs have the releases' parameter
counts, the per-GPU formula gives hand-computed values, ZeRO-2 shards only gradients and optimizer states, and the
printed table has a row per model, precision and GPU count."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "memory_table.py"
spec = importlib.util.spec_from_file_location("memory_table", SCRIPT)
mt = sys.modules["memory_table"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(mt)


@pytest.fixture(scope="module")
def counts() -> dict[str, mt.Counts]:
    return {s.name: mt.count(s) for s in mt.SETUPS}


def test_published_configs_give_the_releases_sizes(counts):
    """Qwen2.5-VL-7B-Instruct has 8.29 B parameters and the 3B 3.75 B (model cards); LLaMA-7B 6.74 B. The setups add
    SAM (ViT-H 641 M, SAM2-L 224 M), phi and LoRA."""
    qwen7, qwen3, lisa = (counts[n] for n in ("Qwen2.5-VL-7B + SAM2-L", "Qwen2.5-VL-3B + SAM2-L", "LISA-7B + SAM ViT-H"))
    sam2_l, sam_h = 224.4e6, 641.1e6
    phi = lambda h: h * h + h + h * 256 + 256  # noqa: E731  (Linear(h, h) + Linear(h, 256))
    assert qwen7.total - sam2_l - phi(3584) - qwen7.lora == pytest.approx(8.29e9, rel=2e-3)
    assert qwen3.total - sam2_l - phi(2048) - qwen3.lora == pytest.approx(3.75e9, rel=2e-3)
    assert lisa.quantised + 2 * 32004 * 4096 == pytest.approx(6.74e9, rel=2e-3)  # LLaMA-7B: layers + embeddings
    assert lisa.total - lisa.lora - phi(4096) - sam_h == pytest.approx(6.74e9 + 303.5e6 + 21.0e6, rel=2e-3)
    assert (lisa.image_tokens, qwen7.image_tokens) == (256, 1024)  # CLIP ViT-L/14 at 224; 802816 px / 28^2
    assert qwen3.kv == 256 and qwen7.kv == 512 and lisa.kv == 4096
    # LoRA r=8 on q and v of every layer: Qwen2.5-VL-7B q 3584->3584, v 3584->512
    assert qwen7.lora == 28 * 8 * ((3584 + 3584) + (3584 + 512))


def test_formula_by_hand():
    c = mt.Counts(total=1000, trainable=100, lora=10, quantised=600, layers=2, hidden=8, kv=4, mlp=16, vocab=50,
                  image_tokens=6)
    m = mt.memory(c, qlora=True, gpus=4, batch=2, text_tokens=4)
    gib = 2**30
    assert m["weights"] * gib == pytest.approx(2 * 400 + mt.NF4_BYTES * 600)
    assert (m["gradients"] * gib, m["optimizer"] * gib) == pytest.approx((2 * 100 / 4, 12 * 100 / 4))
    assert m["activations"] * gib == pytest.approx(2 * 10 * (2 * 2 * 8 + 12 * 8 + 4 * 4 + 8 * 16 + 10 * 50))


def test_zero2_shards_gradients_and_optimizer_only(counts):
    c = counts["LISA-7B + SAM ViT-H"]
    one, eight = mt.memory(c, False, 1, 2, 256), mt.memory(c, False, 8, 2, 256)
    assert one["weights"] == eight["weights"] and one["activations"] == eight["activations"]
    assert one["optimizer"] == pytest.approx(8 * eight["optimizer"])
    assert mt.memory(c, True, 1, 2, 256)["weights"] < one["weights"] / 2


def test_table_has_a_row_per_model_precision_and_gpu_count(capsys):
    assert mt.main(["--gpus", "1", "2", "8"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert len(rows) == 3 * 2 * 3 and all(r.count("|") == 9 for r in rows)
    assert sum("NF4 (QLoRA)" in r for r in rows) == 9
