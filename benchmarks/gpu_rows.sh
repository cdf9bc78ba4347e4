#!/usr/bin/env bash
# Every GPU row BENCHMARKS.md still misses, in one go, within DEADLINE seconds (default 470, under 8 minutes) on one
# lent GPU: MiT-B5 crop 513 AllSpark (memory on) and SemiBaseline steps in fp32 and bf16 with peak memory, the
# AllSpark step compiled (bf16), the UniMatch V2 loop step at DINOv2-base crop 518 (fp32, bf16), and ours against
# the releases at those settings where their harness is present (../shared/reference, or REFERENCE=path).
# Rows run in order of need; each gets at most its own limit and what is left of the deadline, and a row cut short
# says so in its file. Output: one text file per row in OUT_DIR (default benchmarks/results/gpu_rows/<UTC time>),
# the files BENCHMARKS.md's "GPU rows" section quotes.
#
#     benchmarks/gpu_rows.sh                               # PYTHON=... picks the interpreter (default: python3)
#     OUT_DIR=$OUT/gpu_rows REFERENCE=shared/reference benchmarks/gpu_rows.sh   # on a lent device machine
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_rows.sh: no CUDA device visible to $PYTHON (torch.cuda.is_available() is False): nothing measured" >&2
    exit 1
fi
DEADLINE=${DEADLINE:-470}
REFERENCE=${REFERENCE:-../shared/reference}
OUT_DIR=${OUT_DIR:-benchmarks/results/gpu_rows/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT_DIR"
start=$SECONDS

row() {  # row NAME LIMIT_S MODULE ARGS...: one benchmark, its output in OUT_DIR/NAME.txt
    local name=$1 limit=$2 left=$((DEADLINE - (SECONDS - start)))
    shift 2
    local file="$OUT_DIR/$name.txt"
    if ((left < 30)); then
        echo "$name: not run, the deadline of ${DEADLINE}s was reached" | tee "$file"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (at most ${limit}s): python -m $*" | tee "$file"
    timeout "$limit" "$PYTHON" -m "$@" >>"$file" 2>&1
    local status=$?
    ((status == 124)) && echo "$name: cut short at ${limit}s" >>"$file"
    ((status != 0 && status != 124)) && echo "$name: exit status $status" >>"$file"
    tail -n 8 "$file"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT_DIR/device.txt" 2>&1
"$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' >>"$OUT_DIR/device.txt"
B5=(--device cuda --encoder mit_b5 --crop 513 --batch 2 --iters 10 --warmup 3
    --settings semi "allspark (memory on)")
V2=(--device cuda --encoder dinov2_base --crop 518 --batch 2 --iters 10 --warmup 3 --settings "unimatch_v2 loop")
row b5_fp32 80 benchmarks.speed.bench_train "${B5[@]}" --amp off
row b5_bf16 80 benchmarks.speed.bench_train "${B5[@]}" --amp bf16
row v2_base_518 90 benchmarks.speed.bench_train "${V2[@]}" --amp off
row v2_base_518_bf16 90 benchmarks.speed.bench_train "${V2[@]}" --amp bf16
if [[ -d "$REFERENCE/harness" ]]; then
    row b5_side_by_side 100 benchmarks.speed.bench_side_by_side --device cuda --arch b5 --crop 513 --rounds 5 \
        --warmup 2 --reference "$REFERENCE"
else
    echo "b5_side_by_side: not run, the releases' harness is absent ($REFERENCE/harness)" | tee "$OUT_DIR/b5_side_by_side.txt"
fi
row b5_compiled_bf16 150 benchmarks.speed.bench_train --device cuda --encoder mit_b5 --crop 513 --batch 2 --iters 10 \
    --warmup 3 --settings "allspark (memory on)" --amp bf16 --compile
if [[ -d "$REFERENCE/harness" ]]; then
    row v2_side_by_side 100 benchmarks.speed.bench_v2_side_by_side --device cuda --size base --crops 518 --rounds 5 \
        --warmup 1 --reference "$REFERENCE"
fi
echo "gpu_rows.sh: $((SECONDS - start)) s; files in $OUT_DIR"
