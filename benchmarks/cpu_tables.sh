#!/usr/bin/env bash
# Every committed CPU table, regenerated in one go from a clean, committed tree (the bench refuses
# a dirty one). About 25 minutes on 2 cores; run it on an otherwise idle machine.
#   LTH_SPARSE_DATA=../shared/data bash benchmarks/cpu_tables.sh
# Writes benchmarks/results/<machine-tag>/{all-fp32,ticket-lenet}/, benchmarks/results/
# training_step/{step,imp}.{json,md} and benchmarks/results/training_throughput.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LTH_SPARSE_DATA:?set LTH_SPARSE_DATA to the folder holding MNIST/raw}"
THREADS=${THREADS:-2}
VENV=${VENV:-.venv}
LS="$VENV/bin/lth-sparse"
PY="$VENV/bin/python"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export TQDM_DISABLE=1

make runtime >/dev/null
RUNTIME=$(find build/runtime -name lth-sparse-run -type f | head -1)

# The tickets: LeNet-300-100, 15 rounds of IMP (20%/round, output 10%) at 3,000 iterations a
# round, exported at 21.1%, 10.7% and 3.6% of the weights remaining (rounds 7, 10, 15).
"$LS" find-ticket --iterations 3000 --eval-every 500 --rounds 15 --controls "" --seed 0 \
    --runs-dir "$WORK/runs" >/dev/null
RUN=$(find "$WORK/runs" -mindepth 1 -maxdepth 1 -type d -name '[0-9a-f]*' | head -1)
for r in 7 10 15; do
    "$LS" export "$RUN" --round "$r" -o "$WORK/lenet_round$r.safetensors" >/dev/null
done

# Ticket end to end: torch dense, ONNX Runtime, torch.sparse, lth_sparse, C runtime, floor.
"$LS" bench --ticket "$WORK"/lenet_round{7,10,15}.safetensors --runtime "$RUNTIME" \
    --threads "$THREADS" --out-dir "benchmarks/results/$("$PY" -c \
    'from lth_sparse.bench.machine import machine_tag; print(machine_tag("cpu"))')/ticket-lenet"

# Training: the fused step across densities, IMP wall time auto vs dense, the training loop.
"$PY" benchmarks/training_step.py step --threads "$THREADS"
"$PY" benchmarks/training_step.py imp --iterations 1000 --rounds 15 --threads "$THREADS" \
    --data-dir "$LTH_SPARSE_DATA"
"$PY" benchmarks/training_throughput.py --data-dir "$LTH_SPARSE_DATA" --iterations 1000 \
    --eval-every 500 --repeats 3 --threads "$THREADS"

# The kernel grids (spmm and training step over shapes x sparsities x batches), ~10 minutes.
"$LS" bench --threads "$THREADS"
