#!/usr/bin/env bash
# The GPU checks of issues 5 and 6 in one script, for a short loan of one NVIDIA GPU (sized for ~8 minutes on an H100):
#   1. the CUDA tests (resident data, bf16, channels_last) and the throughput bench;
#   2. the reference study at full size (1,600 / 400 / 400 phantoms at 256², 30 epochs, batch 32): the reference
#      notebook loop against xferlab, ResNet-18 then ResNet-34, frozen / adabn / fine-tune (benchmarks/compare_reference.py);
#   3. the same ResNet-18 fine-tune launched by torchrun as one nccl rank (DistributedDataParallel, sampler, gathers).
# ImageNet weights cannot be fetched on an offline machine, so every run uses random initialisation (--weights none):
# timings do not depend on the weights, accuracies do (they are not the reference's).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh          # results land in $OUT (logs, JSON)
#   DEVICE=cpu SIZE="--image-size 32 --n-per-class 20 --n-test-per-class 8" EPOCHS=1 bash benchmarks/gpu_session.sh
#                                                        # a dry run of the script itself on a CPU machine
#
# On a machine without this project's Python dependencies, wheels in .whl/ are installed into /tmp/site first.
set -uo pipefail
OUT=${OUT:-/tmp/xferlab-gpu} DEVICE=${DEVICE:-cuda} SIZE=${SIZE:---full} EPOCHS=${EPOCHS:-30}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
step() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.log"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"

step "CUDA tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/engine/test_accel.py tests/engine/test_bench.py 2>&1 \
    | tail -5 | tee "$OUT/tests.log"

step "bench resnet18 256"
timeout 90 python3 -m xferlab bench --backbone resnet18 --image-size 256 --batch-size 32 --device "$DEVICE" --steps 20 \
    --out "$OUT/bench_resnet18.json" >/dev/null 2>"$OUT/bench.err"; tail -3 "$OUT/bench.err"

for backbone in resnet18 resnet34; do
    step "reference study, $backbone, full size"
    timeout 300 python3 benchmarks/compare_reference.py $SIZE --epochs "$EPOCHS" --finetune-epochs "$EPOCHS" --device "$DEVICE" \
        --backbone "$backbone" \
        --work "/tmp/work-$backbone" --json "$OUT/compare_$backbone.json" >"$OUT/compare_$backbone.txt" \
        2>"$OUT/compare_$backbone.err"
    cat "$OUT/compare_$backbone.txt"; tail -3 "$OUT/compare_$backbone.err"
    if [ "$backbone" = resnet18 ]; then
        step "torchrun, 1 nccl rank: resnet18 fine-tune, same data and settings"
        timeout 120 python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m xferlab train \
            --data /tmp/work-resnet18/phantoms --backbone resnet18 --weights none --regime finetune \
            --epochs "$EPOCHS" --device "$DEVICE" --out /tmp/ddp-resnet18 --overwrite 2>&1 | tail -3 | tee "$OUT/torchrun.log"
        cp /tmp/ddp-resnet18/metrics.json "$OUT/torchrun_metrics.json" 2>/dev/null
    fi
done
step "done"
