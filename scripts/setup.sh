#!/usr/bin/env bash
# Fresh-machine set-up: a virtual environment in .venv with rcedetect and its test dependencies.
# On a CPU machine torch is pinned to the 2.13.0 CPU build; set TORCH_SPEC to install another
# build (e.g. TORCH_SPEC="torch" on a CUDA machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
# torchattacks (a test-only reference) declares torchvision and an old requests; both would pull
# a CUDA build of torch. It runs without them, so it is installed on its own, without deps.
.venv/bin/python -m pip install -q --no-deps torchattacks==3.5.1
.venv/bin/python -c "import rcedetect, torch; print('rcedetect', rcedetect.__version__, 'torch', torch.__version__)"
