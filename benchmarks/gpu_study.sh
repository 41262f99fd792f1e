#!/usr/bin/env bash
# Issue #18's GPU session in one command, from the repository root of a machine with one CUDA GPU (~7 min on an H200):
#   1. the CUDA tests of the graph trainers, resident data and bench (tests/engine/test_headfit.py, test_accel.py);
#   2. every measurement, in one process: benchmarks/gpu_study.py -> $OUT/gpu_study.json (+ its log);
#   3. the docs GPU page's section rendered from that JSON into $OUT/gpu_section.md (benchmarks/gpu_docs.py --print).
# Back on the development machine: copy $OUT/gpu_study.json to benchmarks/results/ and run
# `python benchmarks/gpu_docs.py` to rewrite docs/performance/gpu.md's section; commit both.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_study.sh
#
# On a machine without this project's Python dependencies, wheels in .whl/ are installed into /tmp/site first.
set -uo pipefail
OUT=${OUT:-/tmp/xferlab-gpu-study} PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
step() { echo "== $(date +%T) $*"; }

step "CUDA tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -rs tests/engine/test_headfit.py tests/engine/test_accel.py 2>&1 \
    | tail -8 | tee "$OUT/gpu_tests.log"

step "gpu_study.py"
timeout 480 $PY benchmarks/gpu_study.py --out "$OUT/gpu_study.json" 2>"$OUT/gpu_study.log"
echo "exit $?"; tail -5 "$OUT/gpu_study.log"

step "docs page section"
$PY benchmarks/gpu_docs.py --json "$OUT/gpu_study.json" --print | tee "$OUT/gpu_section.md"
step "done"
