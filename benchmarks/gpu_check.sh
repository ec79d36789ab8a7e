#!/usr/bin/env bash
# The GPU check of the fused exit-decision kernel, for a machine with a CUDA device.
#
#   bash benchmarks/gpu_check.sh [BENCHMARK_JSON]     (from the repository root)
#
# 1. Finds a Python with CUDA torch, triton, pytest, pytest-benchmark and hypothesis: .venv, then
#    python3; failing both it makes .venv-gpu (seeing the system's packages, so an installed CUDA
#    torch is reused) and installs what is missing with pip, from the package registry only.
# 2. Runs tests/test_kernels.py: the compiled kernel against the reference on CUDA (the "cuda"
#    cases and the gpu-marked tests), plus the interpreter and compile-only checks.
# 3. Runs benchmarks/test_bench_kernel.py, writing BENCHMARK_JSON
#    (default .benchmarks/exit-decision-gpu.json).
# 4. Prints, per kind, dtype and shape: fused time, reference time, speed-up, GB/s and % of the
#    device's peak, against the targets: fused >= 2x the reference everywhere, and >= 60 % of
#    peak bandwidth where N*C >= 64M.
#
# Exit status: 0 all good; 1 a test or benchmark failed; 2 they passed but a target was missed.
set -euo pipefail

json=${1:-.benchmarks/exit-decision-gpu.json}

has_everything() {
    "$1" - <<'PY' 2>/dev/null
import hypothesis, pytest, pytest_benchmark, torch, triton  # noqa: F401
import adaptix.kernels  # noqa: F401
assert torch.cuda.is_available(), "no CUDA device visible to torch"
PY
}

python=""
for candidate in .venv/bin/python .venv-gpu/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && has_everything "$candidate"; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "== no ready Python found: setting up .venv-gpu"
    [ -x .venv-gpu/bin/python ] || python3 -m venv --system-site-packages .venv-gpu
    python=.venv-gpu/bin/python
    "$python" -m pip install -q -e . pytest pytest-benchmark hypothesis triton
    has_everything "$python" || {
        echo "error: $python still lacks CUDA torch or a package (see above)" >&2
        exit 1
    }
fi
echo "== python: $python"
"$python" - <<'PY'
import torch, triton
print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
PY

status=0
echo "== tests/test_kernels.py"
"$python" -m pytest tests/test_kernels.py -q -p no:cacheprovider -ra || status=1

echo "== benchmarks/test_bench_kernel.py"
mkdir -p "$(dirname "$json")"
"$python" -m pytest benchmarks/test_bench_kernel.py -q -p no:cacheprovider \
    --benchmark-json "$json" --benchmark-columns=mean,stddev,rounds || status=1

echo "== summary ($json)"
targets=0
"$python" - "$json" <<'PY' || targets=$?
import json
import sys

MIN_SPEED_UP = 2.0
MIN_PEAK_FRACTION = 0.6
LARGE = 64 * 2**20  # N*C from which the bandwidth target applies

with open(sys.argv[1]) as handle:
    runs = json.load(handle)["benchmarks"]
means, shapes, fused_info = {}, {}, {}
for run in runs:
    params, extra = run["params"], run["extra_info"]
    key = (params["kind"], extra["dtype"], extra["n_elements"], params["n_cols"])
    means[key, params["backend"]] = run["stats"]["mean"]
    if params["backend"] == "triton":
        fused_info[key] = extra

header = ("kind", "dtype", "N x C", "fused ms", "ref ms", "speed-up", "GB/s", "% peak", "target")
rows, missed = [], 0
for key in sorted({key for key, _ in means}):
    kind, dtype, n_elements, n_cols = key
    fused, reference = means.get((key, "triton")), means.get((key, "torch"))
    extra = fused_info.get(key, {})
    bandwidth = extra.get("bandwidth_bytes_per_s")
    fraction = extra.get("fraction_of_peak")
    speed_up = reference / fused if fused and reference else None
    misses = []
    if speed_up is None:
        misses.append("no fused or no reference timing")
    elif speed_up < MIN_SPEED_UP:
        misses.append(f"speed-up < {MIN_SPEED_UP:g}")
    if n_elements >= LARGE and isinstance(fraction, float) and fraction < MIN_PEAK_FRACTION:
        misses.append(f"< {MIN_PEAK_FRACTION:.0%} of peak")
    unknown_peak = n_elements >= LARGE and not isinstance(fraction, float)
    missed += bool(misses)
    rows.append((
        kind,
        dtype,
        f"{n_elements // n_cols}x{n_cols}",
        f"{fused * 1e3:.3f}" if fused else "-",
        f"{reference * 1e3:.3f}" if reference else "-",
        f"{speed_up:.1f}x" if speed_up else "-",
        f"{bandwidth / 1e9:.0f}" if isinstance(bandwidth, float) else "-",
        f"{fraction:.0%}" if isinstance(fraction, float) else "-",
        "; ".join(misses) or ("ok (peak unknown)" if unknown_peak else "ok"),
    ))
widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
for row in [header, *rows]:
    print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
print(f"targets missed: {missed} of {len(rows)}")
sys.exit(2 if missed else 0)
PY

if [ "$status" -ne 0 ]; then
    echo "FAILED: a test or benchmark failed (see above)"
    exit 1
fi
if [ "$targets" -ne 0 ]; then
    echo "PASSED, but a performance target was missed (see the summary)"
    exit 2
fi
echo "PASSED: correct, and every target met"
