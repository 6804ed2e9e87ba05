#!/usr/bin/env bash
# Install the dev extras into .venv and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
SIM4SEG_EXTRA=dev source "$(dirname "$0")/setup_env.sh"
ruff check sim4seg tests scripts
python -m pytest "$@"
