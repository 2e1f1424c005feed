#!/usr/bin/env bash
# The project's test command (README and .ci/run): set up .venv, lint, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. "${HCE_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check .
# pytest exits 5 when it collects no test: that is a failure here too (set -e).
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
