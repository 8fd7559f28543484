#!/usr/bin/env bash
# The GPU check: one prepared run on a lent GPU machine (see benchmarks/README.md, "GPU check").
#
# Builds the package in place (nothing fetched), then runs, each step time-boxed so that a slow
# one cannot eat the rest: the cuda-marked tests, the copy-bandwidth ceiling, the spmm grid
# (target cells first, then the full grid in parts), a LeNet ticket end to end, and the training
# step; then lays the results out as benchmarks/results/<gpu-tag>/ and evaluates the targets
# (benchmarks/gpu_targets.py). A failed or timed-out step is recorded and the next one runs; the
# script exits 0 whenever it wrote summary.md.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=gpu_check.sh
STEPS=(build cuda_tests bandwidth grid ticket train collect)
# Default time boxes: the training step autotunes about 500 kernel configs on first use (three
# kernels, three layers), so it gets more than the ticket, which is timed at two batches only.
declare -A BUDGET=([build]=60 [cuda_tests]=120 [bandwidth]=15 [grid]=165 [ticket]=60
                   [train]=105 [collect]=15)
declare -A SKIP=()
# The device tool runs one command for at most 600 s; keep a margin for its start and transfers.
MAX_TOTAL=${GPU_CHECK_MAX_TOTAL:-560}
CELL_BUDGET=${GPU_CHECK_CELL_BUDGET:-0.05}
PY=${GPU_CHECK_PYTHON:-python3}
OUT_DIR=${OUT:-}
WORK=${GPU_CHECK_WORK:-}
DATA_DIR=${GPU_CHECK_DATA_DIR:-}
TICKET_BATCHES=${GPU_CHECK_TICKET_BATCHES:-1,16}
TICKET_DTYPES=${GPU_CHECK_TICKET_DTYPES:-fp32}
# Grid parts, run in this order while the grid budget lasts: name|shapes|sparsities|batches|dtype.
# The target cells come first, so they survive a grid that runs out of time; later parts repeat
# those cells, and the first measurement of a cell is the one kept.
LENET_SHAPES=784x300,300x100,100x10
SPARSITIES=0.5,0.8,0.9,0.95,0.98,0.99
BATCHES=1,16,256,4096
DEFAULT_GRID_PARTS="grid-t90|4096x4096|0.9|1,16|bf16
grid-t98|4096x4096|0.98|4096|bf16
grid-bf16-4096|4096x4096|$SPARSITIES|$BATCHES|bf16
grid-bf16-lenet|$LENET_SHAPES|$SPARSITIES|$BATCHES|bf16
grid-fp32-4096|4096x4096|$SPARSITIES|$BATCHES|fp32
grid-fp32-lenet|$LENET_SHAPES|$SPARSITIES|$BATCHES|fp32"
GRID_PARTS=${GPU_CHECK_GRID_PARTS:-$DEFAULT_GRID_PARTS}
GRID_MIN_PART=${GPU_CHECK_GRID_MIN_PART:-10}   # seconds: a part that would get less is not started

usage() {
  cat <<EOF
usage: bash benchmarks/gpu_check.sh [--out DIR] [--work DIR] [--python PY]
                                    [--budget STEP=SECONDS]... [--cell-budget SECONDS]
                                    [--skip STEP,...]

Runs the GPU check and writes its results to DIR (default \$OUT, else ./out/gpu_check):
summary.md, gpu_check.json, gpu_check_full.tar.gz (every log and result file) and
<gpu-tag>/<label>/results.* in the benchmarks/results layout. Exits 0 when summary.md was
written (failed steps are recorded inside it), 2 on bad arguments.

steps and default time boxes (seconds): build=${BUDGET[build]} cuda_tests=${BUDGET[cuda_tests]}
  bandwidth=${BUDGET[bandwidth]} grid=${BUDGET[grid]} ticket=${BUDGET[ticket]} train=${BUDGET[train]} collect=${BUDGET[collect]}
  (together at most ${MAX_TOTAL} s; GPU_CHECK_MAX_TOTAL changes that limit)

options:
  --out DIR            where the results go (the device tool sets \$OUT)
  --work DIR           scratch folder for logs and full results (default: a new /tmp folder)
  --python PY          the Python with torch and triton (default python3)
  --budget STEP=S      time box of one step, whole seconds (repeatable)
  --cell-budget S      seconds of do_bench timing per benchmark cell (default $CELL_BUDGET)
  --skip STEP,...      leave these steps out (recorded as skipped; their boxes do not count),
                       e.g. a second call with --skip cuda_tests,ticket,train --budget grid=450
  -h, --help           this text

environment: GPU_CHECK_BUDGET_<STEP> (e.g. GPU_CHECK_BUDGET_GRID=200), GPU_CHECK_PYTHON,
  GPU_CHECK_TICKET_BATCHES (default 1,16), GPU_CHECK_TICKET_DTYPES (default fp32),
  GPU_CHECK_WORK, GPU_CHECK_CELL_BUDGET, GPU_CHECK_MAX_TOTAL, GPU_CHECK_DATA_DIR (MNIST folder
  for the ticket's test accuracy; without it no download is attempted), GPU_CHECK_GRID_PARTS
  (lines name|shapes|sparsities|batches|dtype), GPU_CHECK_GRID_MIN_PART (seconds a grid part
  needs to be started, default 10), GPU_CHECK_FAKE_<STEP> (a shell command run instead of that
  step, e.g. GPU_CHECK_FAKE_GRID or one part's GPU_CHECK_FAKE_GRID_T90: for testing this script;
  steps see the work folder as \$GPU_CHECK_WORK).
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }

valid_step() { local s; for s in "${STEPS[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

set_budget() {  # step value where
  local step=$1 value=$2 where=$3
  valid_step "$step" || die "unknown step '$step' in $where; steps are: ${STEPS[*]}"
  [[ $value =~ ^[1-9][0-9]*$ ]] || die "the time box of step '$step' ($where) must be a whole" \
    "number of seconds >= 1, got '$value'; e.g. --budget $step=${BUDGET[$step]}"
  BUDGET[$step]=$value
}

for step in "${STEPS[@]}"; do
  var="GPU_CHECK_BUDGET_${step^^}"
  [[ -n ${!var:-} ]] && set_budget "$step" "${!var}" "\$$var"
done

while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a folder"; OUT_DIR=$2; shift 2 ;;
    --work) [[ $# -ge 2 ]] || die "--work needs a folder"; WORK=$2; shift 2 ;;
    --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; PY=$2; shift 2 ;;
    --cell-budget) [[ $# -ge 2 ]] || die "--cell-budget needs seconds"; CELL_BUDGET=$2; shift 2 ;;
    --skip)
      [[ $# -ge 2 ]] || die "--skip needs steps, e.g. --skip cuda_tests,train"
      IFS=, read -ra names <<<"$2"
      for s in "${names[@]}"; do
        valid_step "$s" || die "unknown step '$s' in --skip $2; steps are: ${STEPS[*]}"
        [[ $s == collect ]] && die "--skip collect: the collect step writes the summary; it always runs"
        SKIP[$s]=1
      done
      shift 2 ;;
    --budget)
      [[ $# -ge 2 && $2 == *=* ]] || die "--budget takes STEP=SECONDS, e.g. --budget grid=180"
      set_budget "${2%%=*}" "${2#*=}" "--budget $2"; shift 2 ;;
    *) die "unknown argument '$1'; see --help" ;;
  esac
done

[[ $GRID_MIN_PART =~ ^[0-9]+$ ]] || die "GPU_CHECK_GRID_MIN_PART must be whole seconds," \
  "got '$GRID_MIN_PART'"
[[ $MAX_TOTAL =~ ^[1-9][0-9]*$ ]] || die "GPU_CHECK_MAX_TOTAL must be whole seconds >= 1," \
  "got '$MAX_TOTAL'"
[[ $CELL_BUDGET =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && [[ ! $CELL_BUDGET =~ ^0*\.?0*$ ]] ||
  die "--cell-budget must be a positive number of seconds, got '$CELL_BUDGET'; e.g. 0.05"
total=0
for step in "${STEPS[@]}"; do [[ -n ${SKIP[$step]:-} ]] || total=$((total + BUDGET[$step])); done
(( total <= MAX_TOTAL )) || die "the time boxes add up to ${total} s, over the ${MAX_TOTAL} s" \
  "limit (the device tool stops a command at 600 s); lower some --budget values"
command -v "$PY" >/dev/null 2>&1 || die "python '$PY' not found; pass --python PATH"
command -v timeout >/dev/null 2>&1 || die "'timeout' (coreutils) is needed for the time boxes"

OUT_DIR=${OUT_DIR:-$ROOT/out/gpu_check}
mkdir -p "$OUT_DIR" || die "cannot create the output folder $OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [[ -z $WORK ]]; then WORK=$(mktemp -d /tmp/gpu_check.XXXXXX); fi
mkdir -p "$WORK/logs" "$WORK/parts" "$WORK/tickets" || die "cannot create the work folder $WORK"
WORK=$(cd "$WORK" && pwd)
export GPU_CHECK_WORK=$WORK   # steps (and GPU_CHECK_FAKE_* commands) may read it
STEPS_TSV=$WORK/steps.tsv
printf 'step\tstatus\trc\tseconds\tbudget\tlog\n' >"$STEPS_TSV"

cd "$ROOT" || die "cannot enter $ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
# Autotune timings go to the logs (the summary adds them up); autotune results are cached on
# disk so that a later step (or grid part) does not tune the same kernel key again.
export TRITON_PRINT_AUTOTUNING=1 TRITON_CACHE_AUTOTUNING=1
T0=$SECONDS

record() {  # step status rc seconds budget log
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$STEPS_TSV"
}

# run_step NAME BUDGET_S COMMAND: the command runs under `timeout` in its own process group
# (timeout signals the whole group), its output goes to logs/NAME.log.
run_step() {
  local name=$1 budget=$2 cmd=$3 fake_var="GPU_CHECK_FAKE_${1^^}"
  fake_var=${fake_var//-/_}
  [[ -n ${!fake_var:-} ]] && cmd=${!fake_var}
  local log=logs/$name.log start=$SECONDS rc status
  if [[ -n ${SKIP[${name%%-*}]:-} ]]; then  # grid parts are skipped with the grid
    echo "== $name: skipped (--skip)"
    record "$name" skipped - 0 "$budget" ""
    return 1
  fi
  printf '== %-16s (time box %4s s) ' "$name" "$budget"
  { echo "\$ $cmd"; echo; } >"$WORK/$log"
  timeout --kill-after=3 "$budget" bash -c "$cmd" >>"$WORK/$log" 2>&1 </dev/null
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out" ;;
    *) status="failed rc $rc" ;;
  esac
  local took=$((SECONDS - start))
  echo "$status after ${took} s"
  if [[ $status != ok ]]; then tail -n 5 "$WORK/$log" | sed 's/^/   | /'; fi
  record "$name" "$status" "$rc" "$took" "$budget" "$log"
  [[ $status == ok ]]
}

q() { printf '%q' "$1"; }
BENCH="$(q "$PY") -m lth_sparse.cli bench --device cuda --budget $CELL_BUDGET"

{
  echo "date: $(date -u +%FT%TZ)"; echo "root: $ROOT"; echo "python: $(command -v "$PY")"
  "$PY" -c 'import sys; print("sys.executable:", sys.executable, sys.version.split()[0])'
  timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo "budgets: $(for s in "${STEPS[@]}"; do printf '%s=%s ' "$s" "${BUDGET[$s]}"; done)"
} >"$WORK/logs/environment.log" 2>&1
echo "gpu_check: work $WORK, out $OUT_DIR, python $(command -v "$PY"), time boxes ${total} s"

# 1. build: the C++ extension in place (no download, no build isolation); Triton needs none.
run_step build "${BUDGET[build]}" "$(q "$PY") setup.py build_ext --inplace && \
  $(q "$PY") -c 'import lth_sparse, torch; print(lth_sparse.__file__, lth_sparse.build_info(), \
  \"torch\", torch.__version__, \"cuda\", torch.cuda.is_available())'"

# 2. the cuda-marked tests
run_step cuda_tests "${BUDGET[cuda_tests]}" "$(q "$PY") -m pytest -m cuda -q -rfEs \
  -p no:cacheprovider --junitxml=$(q "$WORK/logs/cuda_tests.xml") tests"

# 3. the memory ceiling the bandwidth target is measured against
run_step bandwidth "${BUDGET[bandwidth]}" "$(q "$PY") benchmarks/gpu_probe.py copy-bandwidth \
  --out $(q "$WORK/copy_bandwidth.json")"

# 4. the spmm grid, in parts, within one time box
grid_fake=GPU_CHECK_FAKE_GRID
if [[ -n ${!grid_fake:-} ]]; then
  run_step grid "${BUDGET[grid]}" "${!grid_fake}"
else
  grid_end=$((SECONDS + BUDGET[grid]))
  while IFS='|' read -r name shapes sparsities batches dtype; do
    [[ -z $name ]] && continue
    left=$((grid_end - SECONDS))
    if [[ -z ${SKIP[grid]:-} ]] && (( left < GRID_MIN_PART )); then
      echo "== $name: not run (grid time box spent)"
      record "$name" "not run" "-" 0 "$left" ""
      continue
    fi
    run_step "$name" "$left" "$BENCH --mode inference --providers dense,torch-csr,triton \
      --shapes $shapes --sparsities $sparsities --batches $batches --dtype $dtype --no-plots \
      --out-dir $(q "$WORK/parts/$name")"
  done <<<"$GRID_PARTS"
fi

# 5. a LeNet ticket end to end (random weights and masks: the speed does not need MNIST).
# Without GPU_CHECK_DATA_DIR the bench's MNIST download must fail at once, not hang offline.
if [[ -n $DATA_DIR ]]; then
  data_flags="--data-dir $(q "$DATA_DIR")"; proxy=""
else
  data_flags=""; proxy="export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 \
    HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 no_proxy= NO_PROXY=;"
fi
TICKET=$WORK/tickets/lenet_random_90pct.safetensors
run_step ticket "${BUDGET[ticket]}" "$proxy $(q "$PY") benchmarks/gpu_probe.py make-ticket \
  --out $(q "$TICKET") --sparsity 0.9 && $BENCH --ticket $(q "$TICKET") --dtype $TICKET_DTYPES \
  --batches $TICKET_BATCHES $data_flags --out-dir $(q "$WORK/parts/ticket")"

# 6. the training step at the target's cell
run_step train "${BUDGET[train]}" "$BENCH --mode train --train-models 784-4096-4096-10 \
  --train-sparsities 0.95 --train-batches 256 --dtype bf16 --out-dir $(q "$WORK/parts/train")"

# 7. results layout, targets, summary
run_step collect "${BUDGET[collect]}" "$(q "$PY") benchmarks/gpu_targets.py collect \
  --work $(q "$WORK") --out $(q "$OUT_DIR")"
collect_ok=$?

if [[ $collect_ok -ne 0 || ! -s $OUT_DIR/summary.md ]]; then
  # the collect step failed: a summary of the steps alone, from bash
  {
    echo "# GPU check"; echo
    echo "Targets not evaluated: the collect step did not finish (see logs/collect.log in"
    echo "gpu_check_full.tar.gz); the raw results are in its parts/ folder."; echo
    echo "| step | status | rc | seconds | budget s |"; echo "|---|---|---:|---:|---:|"
    tail -n +2 "$STEPS_TSV" | while IFS=$'\t' read -r s st rc secs b _; do
      echo "| $s | **$st** | $rc | $secs | $b |"
    done
  } >"$OUT_DIR/summary.md"
  cp "$OUT_DIR/summary.md" "$WORK/summary.md"
fi

echo "total: $((SECONDS - T0)) s" >>"$WORK/logs/environment.log"
entries=()
for e in summary.md gpu_check.json steps.tsv copy_bandwidth.json logs parts results tickets; do
  [[ -e $WORK/$e ]] && entries+=("$e")
done
tar -czf "$OUT_DIR/gpu_check_full.tar.gz" -C "$WORK" "${entries[@]}" ||
  echo "$PROG: could not write gpu_check_full.tar.gz" >&2

echo
echo "gpu_check: $((SECONDS - T0)) s; results in $OUT_DIR (full tree and logs: gpu_check_full.tar.gz)"
echo
cat "$OUT_DIR/summary.md"
[[ -s $OUT_DIR/summary.md ]]
