#!/usr/bin/env bash
# Every GPU path of the project checked and timed in one run (benchmarks/README.md, "GPU checks").
#
#   benchmarks/gpu/prepare.sh                  # here, once: wheels, redis-server, SmolLM2's config -> .gpu/
#   benchmarks/gpu/run.sh --out DIR            # on the GPU machine, with .gpu/ carried: at most 9 minutes
#   benchmarks/gpu/run.sh --dry-run --out DIR  # toy sizes on the CPU (what make test runs)
#
# Prints the versions first, installs only what the machine lacks (from .gpu/, nothing is downloaded),
# then runs each part under its own time limit: one part failing or timing out never stops the next.
# DIR receives results.json (every figure), report.md (the tables) and log.txt.
set -u
cd "$(dirname "$0")/../.."
REPO=$(pwd)

DRY=""
OUT="runs/gpu"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run" ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: $0 [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cgpo-gpu.XXXXXX")
PARTS_DIR="$WORK/parts"
mkdir -p "$PARTS_DIR"
exec > >(tee "$OUT/log.txt") 2>&1

if [ -n "$DRY" ]; then
  PY=${PYTHON:-$REPO/.venv/bin/python}
else
  PY=${PYTHON:-python3}
fi
case "$PY" in
  */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;;  # the parts run from another directory
  *) PY=$(command -v "$PY") ;;
esac
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

echo "== environment ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" - <<'EOF'
import importlib.util, platform
import torch
print(f"python {platform.python_version()}  torch {torch.__version__}  cuda {torch.version.cuda}  "
      f"gpu {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
for name in ("transformers", "peft", "vllm", "fastapi", "redis", "aiohttp"):
    found = importlib.util.find_spec(name) is not None
    version = ""
    if found:
        from importlib.metadata import PackageNotFoundError, version as v
        for dist in (name, f"{name}-cpu"):
            try:
                version = v(dist)
                break
            except PackageNotFoundError:
                pass
    print(f"{name}: {version or ('present' if found else 'missing')}")
EOF

echo "== installs"
if [ -z "$DRY" ]; then
  if ! "$PY" -c "import cgpo.services.common.settings, fastapi, redis, peft" 2>/dev/null; then
    if ls .gpu/wheels/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .gpu/wheels/*.whl \
        && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" && echo "installed $(ls .gpu/wheels | wc -l) wheels"
    else
      echo "the project is not importable and .gpu/wheels is missing (run benchmarks/gpu/prepare.sh here first)"
    fi
  fi
  if ! command -v redis-server >/dev/null && ls .gpu/debs/*.deb >/dev/null 2>&1; then
    for deb in .gpu/debs/*.deb; do dpkg -x "$deb" "$WORK/root"; done
    export PATH="$WORK/root/usr/bin:$PATH" LD_LIBRARY_PATH="$WORK/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
command -v redis-server >/dev/null && redis-server --version || echo "redis-server: missing (the queue check is skipped)"
export PATH="$(dirname "$PY"):$PATH"  # torchrun of this Python
# The parts run from the scratch directory with the checkout last on the path: a cgpo installed from
# .gpu/wheels (cgpo.services, cgpo.trainer) is found before the checkout's cgpo/ folder.
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO"
cd "$WORK"

# name:seconds on the GPU (the whole run stays under 9 minutes); the dry run gets more per part
# on a shared CPU, as it measures nothing.
for spec in rollouts:90 trainer_step:130 rm_service:110 llm_judges:90 nccl:45 sharding:70; do
  part=${spec%%:*}
  limit=${spec##*:}
  [ -n "$DRY" ] && limit=$((limit * 3))
  echo "== $part (limit ${limit}s)"
  export GPU_PART_LIMIT_S=$limit  # the part skips what would not finish in it (common.Budget)
  timeout -k 10 "$limit" "$PY" -m benchmarks.gpu.part "$part" --out "$PARTS_DIR" --work "$WORK/work" $DRY
  status=$?
  if [ ! -f "$PARTS_DIR/$part.json" ]; then
    echo "{\"part\": \"$part\", \"ok\": false, \"error\": \"stopped (exit $status) after ${limit}s or before writing results\"}" \
      > "$PARTS_DIR/$part.json"
  fi
done

echo "== report"
"$PY" -m benchmarks.gpu.report "$PARTS_DIR" --out "$OUT"
cd "$REPO" && rm -rf "$WORK"
