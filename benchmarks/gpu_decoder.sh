#!/usr/bin/env bash
# Token-level early exit of a decoder LM on a CUDA device: benchmarks/decoder_speed.py with
# larger batches, for a GPU session.
#
#   bash benchmarks/gpu_decoder.sh [OUT_JSON] [extra decoder_speed.py options]   (repository root)
#
# 1. Finds a Python with CUDA torch, transformers and the adaptix-transformers plugin: .venv, then
#    python3 (PYTHONPATH gets this tree and its plugin, so the tree's code is what runs).
# 2. Runs decoder_speed.py on cuda at batch 1, 8, 32, 128 and 256 (64 new tokens, 5 rounds), three
#    targets, deferred and copy, plus transformers' generate at batch 1; writes OUT_JSON
#    (default .benchmarks/decoder-speed-gpu.json) and prints the markdown table.
# On a GPU the host reads of the generator are device synchronisations: compare the realised
# speed-ups here with the CPU figures to see what they cost.
set -euo pipefail

out=${1:-.benchmarks/decoder-speed-gpu.json}
shift || true
root=$(pwd)
export PYTHONPATH="$root:$root/plugins/adaptix-transformers${PYTHONPATH:+:$PYTHONPATH}"

ready() {
    "$1" - <<'PY' 2>/dev/null
import torch, transformers, adaptix_transformers  # noqa: F401
assert torch.cuda.is_available(), "no CUDA device visible to torch"
PY
}

python=""
for candidate in .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && ready "$candidate"; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "error: no Python with CUDA torch and transformers found (.venv, python3)" >&2
    exit 1
fi
"$python" -c 'import torch; print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")'
mkdir -p "$(dirname "$out")"
"$python" benchmarks/decoder_speed.py --device cuda --threads 0 \
    --batches 1 8 32 128 256 --rows 4 32 64 128 256 --new-tokens 64 --rounds 5 \
    --out "$out" "$@"
