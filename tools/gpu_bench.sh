#!/usr/bin/env bash
# The project's GPU checks as one short run, for a lent GPU machine (docs/speed.md):
#   1. the training step of both families, fp32 and bf16 + channels_last, at the recipe batch sizes;
#   2. the gradient methods' step time beside equal on the pixel network (hard sharing and AFA);
#   3. the gradient-method and GPU-only tests (fp16 scaling on CUDA among them).
# The JSON files go to $OUT (or bench_out/): commit them under docs/ with the machine they name.
#   tools/gpu_bench.sh                    on a CUDA machine (installs requirements if torch is missing)
#   DEVICE=cpu QUICK=1 tools/gpu_bench.sh a dry run of the same commands on CPU with tiny networks
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench_out}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    "$PY" -m pip install -q -r requirements.txt -r requirements-solvers.txt
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
if [ "${QUICK:-0}" = 1 ]; then
    SIZE=(--depths 1 1 1 1 --input-size 64 --batch-size 2 --steps 1 --warmup 0)
else
    SIZE=(--steps 10 --warmup 3)
fi
METHODS=(pcgrad cagrad mgda imtl nash aligned upgrad famo)
"$PY" bench.py --device "$DEVICE" --modes fp32 bf16+cl "${SIZE[@]}" --json "$OUT/steps_$DEVICE.json"
"$PY" bench.py --device "$DEVICE" --kinds pixel --fusions shared afa --modes bf16+cl "${SIZE[@]}" --no-flops \
    --weightings "${METHODS[@]}" --json "$OUT/gradients_$DEVICE.json"
"$PY" -m pytest -q -x -p no:cacheprovider tests/test_gradients.py tests/test_gradient_training.py -m "not slow"
echo "wrote $OUT/steps_$DEVICE.json $OUT/gradients_$DEVICE.json"
