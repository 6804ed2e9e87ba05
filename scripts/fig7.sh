#!/usr/bin/env bash
# Reproduce the paper's Figure 7 (see README "Reproducing the paper").
#   scripts/fig7.sh --smoke                                   # minutes on a CPU: synthetic data, tiny model
#   scripts/fig7.sh --data /data/m3ds --lisa-dir /models/lisa7b-converted   # full size (GPU)
# Finished runs are skipped; results go to results/fig7.md (results/smoke/ with --smoke).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
exec python -m sim4seg.reproduce fig7 "$@"
