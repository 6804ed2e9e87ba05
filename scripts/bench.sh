#!/usr/bin/env bash
# Benchmarks (each against a baseline measured in the same run; one module each in sim4seg/bench/):
#   scripts/bench.sh generate|tts|train_step|loader|metrics|encoder|all [--json] [--quick] [--repeats R] [--threads T]
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
exec python -m sim4seg.bench "$@"
