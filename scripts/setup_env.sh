# Sourced by scripts/*.sh: make .venv with everything installed. Idempotent: a stamp of pyproject.toml's hash
# skips pip when nothing changed. Usage: [SIM4SEG_EXTRA=dev] source scripts/setup_env.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRA="${SIM4SEG_EXTRA:-}"  # "dev" adds the test tools
STAMP="$VENV/.sim4seg-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-12)${EXTRA:+-$EXTRA}"
if [ ! -f "$STAMP" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  PIP="$VENV/bin/pip --disable-pip-version-check -q"
  if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    # torchvision must match torch (segment_anything imports it); these pairs are known to work.
    if [ "$(uname -m)" = "aarch64" ]; then $PIP install torch==2.9.1 torchvision==0.24.1
    else $PIP install torch==2.14.1 torchvision==0.29.1; fi
  fi
  # DS_BUILD_OPS=0: DeepSpeed compiles nothing at install time (and the CPU path never JIT-builds ops).
  DS_BUILD_OPS=0 $PIP install -e "$ROOT${EXTRA:+[$EXTRA]}"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT=true TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
cd "$ROOT"
