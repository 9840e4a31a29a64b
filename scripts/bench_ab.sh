#!/usr/bin/env bash
# bench_ab.sh: sampling cost of two effdm builds, A and B, measured in one run.
#
#   scripts/bench_ab.sh OLD_EFFDM NEW_EFFDM [EXPORT.safetensors] [ROUNDS]
#
# 64 images of the shipped teacher (DDIM 20, eta 0, guidance 3, 1 thread) with each build,
# FP and, given an export, that export; A and B interleaved per round, CPU seconds (user +
# system: on a shared machine CPU time counts the work, not the waiting for a core); prints
# each round and the minimum per case (other jobs only ever add time).
set -euo pipefail
A=$1 B=$2 EXPORT=${3:-} ROUNDS=${4:-5}
cd "$(dirname "$0")/.."
Z=models/zoo/fmnist-ldm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cases=(fp)
[[ -n $EXPORT ]] && cases+=(export)
for r in $(seq "$ROUNDS"); do
    for side in A B; do
        bin=$A
        [[ $side == B ]] && bin=$B
        for k in "${cases[@]}"; do
            args=(--ldm-config $Z/config.yaml --ckpt $Z/model.ckpt)
            [[ $k == export ]] && args=(--model "$EXPORT")
            /usr/bin/time -f "%U %S" -o "$tmp/t" "$bin" sample "${args[@]}" --n 64 --steps 20 --eta 0 --scale 3 \
                --seed 0 --threads 1 --out "$tmp/s" > /dev/null 2>&1
            rm -rf "$tmp/s"
            echo "$r $side $k $(awk '{print $1 + $2}' "$tmp/t")" | tee -a "$tmp/all"
        done
    done
done
echo "minimum CPU seconds (A = $A, B = $B):"
for k in "${cases[@]}"; do
    a=$(awk -v k=$k '$2 == "A" && $3 == k {print $4}' "$tmp/all" | sort -g | head -1)
    b=$(awk -v k=$k '$2 == "B" && $3 == k {print $4}' "$tmp/all" | sort -g | head -1)
    echo "  $k: A $a s, B $b s, A / B $(awk -v a=$a -v b=$b 'BEGIN {printf "%.2f", a / b}')x"
done
