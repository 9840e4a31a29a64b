#!/usr/bin/env bash
# prune.sh: the pruning rows of docs/RESULTS_QUANTIZERS.md (issue 15), resumable.
#
#   SEEDS="0 1 2" scripts/quality/prune.sh [VARIANT...]   # default: the ff30 rows and the speed
#   scripts/quality/prune.sh --speed                      # only the sampling-speed ratios
#   scripts/quality/prune.sh --flops                      # only the UNet MFLOP per image
#
# 1. The pruned FP checkpoints runs/prune/ff<R>-<udfc|none>.safetensors (R = 10, 30, 50% of
#    every FeedForward's units; effdm compress with its defaults: 64 teacher trajectories for
#    the UDFC moments), and q4udfc / ff30-udfc-q4udfc (--quant-udfc 4: ff.net.2 absorbs the
#    W4 quantization error of ff.net.0.proj; for W4 runs only), each made once.
# 2. scripts/quality.sh on the shipped teacher's cache (runs/quantizers, where the FP teacher's
#    samples of the same seeds are): the fp-ff* variants are those checkpoints sampled as they
#    are, the ptq-w4a8-ff* variants their naive W4A8 PTQ; paired with the FP samples by
#    `effdm compare`, and with the FP reference for FID to FP.
# 3. --speed (and by default): sampling time of FP vs pruned FP and of the W4A8 exports,
#    unpruned vs pruned, interleaved in one run (64 images, DDIM 20, guidance 3, 1 thread,
#    CPU seconds of the process - user + system -, 5 rounds, the minimum: other jobs only ever
#    add time)
#    -> runs/quantizers/meta/prune_speed.json.
# Environment: as quality.sh (SEEDS, N, EFFDM, PY); run from the repository root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
EFFDM=${EFFDM:-./build/effdm}
PY=${PY:-/usr/bin/python3}
export QUALITY_DIR=${QUALITY_DIR:-runs/quantizers}
Q=$QUALITY_DIR
mkdir -p runs/prune "$Q/meta" "$Q/logs"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

compress() {  # NAME ARGS...: runs/prune/NAME.safetensors, made once
    local name=$1 out=runs/prune/$1.safetensors
    shift
    [[ -f $out ]] && return 0
    log "compress $*"
    "$EFFDM" compress "$@" --out "$out" > "$Q/logs/prune-$name.log" 2>&1
}
for r in 10 30 50; do
    for mode in udfc none; do compress ff$r-$mode --ff "0.$r" --reconstruct $mode; done
done
# UDFC for the weight-quantization error of ff.net.0.proj at W4 (the ptq-*-q4udfc variants)
compress q4udfc --quant-udfc 4
compress ff30-udfc-q4udfc --ff 0.3 --quant-udfc 4

speed() {
    local out=$Q/meta/prune_speed.json
    [[ -f $out ]] && return 0
    "$HERE/../quality.sh" ptq-w4a8 ptq-w4a8-ff30-udfc > /dev/null  # the exports (SEEDS as given)
    local Z=models/zoo/fmnist-ldm tmp
    tmp=$(mktemp -d)
    local -A args=(
        [fp]="--ldm-config $Z/config.yaml --ckpt $Z/model.ckpt"
        [fp-ff30]="--ldm-config $Z/config.yaml --ckpt runs/prune/ff30-udfc.safetensors"
        [w4a8]="--model $Q/models/ptq-w4a8.safetensors"
        [w4a8-ff30]="--model $Q/models/ptq-w4a8-ff30-udfc.safetensors"
    )
    : > "$tmp/times"
    for round in 1 2 3 4 5; do
        for k in fp fp-ff30 w4a8 w4a8-ff30; do
            # CPU seconds (user + system) of one thread: less at the mercy of other jobs than wall time
            # shellcheck disable=SC2086
            /usr/bin/time -f "%U %S" -o "$tmp/t" "$EFFDM" sample ${args[$k]} --n 64 --steps 20 --eta 0 \
                --scale 3 --seed 0 --threads 1 --out "$tmp/s-$k-$round" > /dev/null 2>&1
            echo "$k $(awk '{print $1 + $2}' "$tmp/t")" >> "$tmp/times"
            log "speed round $round: $k $(tail -1 "$tmp/times" | cut -d' ' -f2) s"
        done
    done
    "$PY" - "$tmp/times" "$out" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" <<'EOF'
import json, statistics, sys
t = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    t.setdefault(k, []).append(float(v))
med = {k: min(v) for k, v in t.items()}
json.dump({"cpu_seconds_64_images": med, "statistic": "min", "all": t, "cpu": sys.argv[3].strip(), "threads": 1,
           "fp_over_pruned": med["fp"] / med["fp-ff30"], "w4a8_over_pruned": med["w4a8"] / med["w4a8-ff30"]},
          open(sys.argv[2] + ".tmp", "w"), indent=1)
EOF
    mv "$out.tmp" "$out"
    rm -rf "$tmp"
    cat "$out"
}

flops() {  # GEMM MFLOP of one UNet forward of one image, per checkpoint -> meta/prune_flops.json
    local out=$Q/meta/prune_flops.json Z=models/zoo/fmnist-ldm tmp
    tmp=$(mktemp -d)
    : > "$tmp/flops"
    for k in fp ff10-udfc ff10-none ff30-udfc ff30-none ff50-udfc ff50-none; do
        local ck=runs/prune/$k.safetensors
        [[ $k == fp ]] && ck=$Z/model.ckpt
        # one image, one step, no guidance: one UNet forward and the decode (block first_stage)
        "$EFFDM" sample --ldm-config $Z/config.yaml --ckpt "$ck" --n 1 --steps 1 --scale 1 --seed 0 \
            --threads 1 --profile --out "$tmp/s" > "$tmp/log" 2>&1
        awk -v k=$k '/^profile by block/ {b = 1; next} b && NF == 8 && $1 != "block" && $1 != "first_stage" {s += $8}
                     END {printf "%s %.6f\n", k, s}' "$tmp/log" >> "$tmp/flops"
        rm -rf "$tmp/s"
    done
    "$PY" -c 'import json, sys; json.dump({l.split()[0]: float(l.split()[1]) for l in open(sys.argv[1])}, open(sys.argv[2], "w"), indent=1)' \
        "$tmp/flops" "$out"
    rm -rf "$tmp"
    cat "$out"
}

if [[ ${1:-} == --speed ]]; then speed; exit 0; fi
if [[ ${1:-} == --flops ]]; then flops; exit 0; fi
if [[ $# -eq 0 ]]; then
    set -- fp-ff30-udfc fp-ff30-none ptq-w4a8 ptq-w4a8-ff30-udfc ptq-w4a8-ff30-none
    "$HERE/../quality.sh" "$@"
    speed
else
    "$HERE/../quality.sh" "$@"
fi
