#!/bin/sh
# Every speed measure of issue 17 in one process tree on one machine, with the ratios against
# their targets in one table:
#
#   scripts/bench_all.sh [--quick] [--threads N] [--md FILE] [--cin256]
#
# Rows (each runs an existing bench; this script only runs them and reads their output):
#   step           seconds per W4A4 distillation step, shipped teacher, batch 2, reference recipe:
#                  scripts/bench_peer.sh (effdm bench/finetune, the PyTorch EfficientDM peer, effdm
#                  twice again; the ratio uses the median of the three effdm medians)
#                                                                             target peer/effdm >= 10
#   unet b16, b64  one FP UNet forward of the shipped teacher at batch 16 / 64: bench/sample against
#                  bench/peer_sample.py (the CompVis modules in PyTorch)       target torch/effdm >= 2
#   ddim50         50-step DDIM, guidance 3, 64 images at batch 64, decode included: the same two
#                  (effdm: median of 3 runs; torch: of 2 after a warm-up)     target torch/effdm >= 2
#   w4a4, w4a4-static, w4a8
#                  20-step guided DDIM over 64 images (batch 16, end to end) of the FP teacher
#                  against W4A4 (the default config: per-token activation ranges), W4A4 with
#                  static ranges and W4A8 exports with the integer kernels: bench/qsample,
#                  wall-time medians. The exports are calibrate-only runs of
#                  configs/fmnist-ldm-w4a4.yaml / -w4a4-static.yaml / -w4a8.yaml in a temp dir
#                  (speed does not depend on the fine-tuning)  target FP/W4A4 >= 3 (W4A8: none)
#   bound          the same sampling of the FP teacher with every layer the W4A4 export quantizes
#                  costing nothing (bench/qsample's "free layers" row): FP / bound is the most any
#                  W4A4 kernel could reach end to end                        no target (a ceiling)
#   inception      FID Inception images/s, 299 x 299, pool3 features, 2 threads, batch 32 (quick: 8):
#                  bench/inception (no PyTorch column: torchvision is not installed)  target >= 20
#   cin256 (--cin256 only: PyTorch needs ~32 s/step and 23 GB) W4A4 step of the LDM-4 ImageNet UNet,
#                  random weights, batch 2: bench/finetune --model cin256 against bench/peer_cin256.py
#                  target peer/effdm >= 2; and its peak RSS (effdm: of the steps)  target <= 8192 MiB
# --quick: few repetitions (1 peer epoch, 1 rep of the PyTorch sampling, 1 qsample round, a
# 50-step calibration of 4 trajectories, 1 s per Inception case): checks that the script works,
# the numbers are rough. Without it: the benches' own defaults (peer 2 epochs, 5 reps, 3 rounds).
# Before the table it prints the machine (CPU model, cores, avx2/avx512f/avx512_vnni/amx flags, load
# average), the BLAS each side resolved (torch: the libblas/openblas mapped into the process after
# a matmul; effdm: the libopenblas build/effdm links, its openblas_get_config(), the kernels it
# runs (openblas_get_corename, $OPENBLAS_CORETYPE) and the threading effdm uses), the FP32 GEMM kernel
# effdm picked (its own AVX-512 one or OpenBLAS; $EFFDM_SGEMM forces one), and the integer kernel
# bench/qsample picked ($EFFDM_KERNEL forces one).
# Every bench's full output is kept in the temp dir while it runs and printed on failure. The
# benches run at the script's own priority, all alike (`nice scripts/bench_all.sh` to lower it:
# a nice inside would stack onto the caller's and starve the peer on a loaded machine).
#
# Needs: a Release build (cmake --build build: build/effdm, build/bench/{finetune,sample,qsample,
# inception}); what the peer needs (/work/shared/peer/README.md; omegaconf: the stand-in in
# scripts/teachers, put on PYTHONPATH here and by bench_peer.sh and peer_sample.py): python3-torch python3-yaml
# python3-pil python3-tqdm libopenblas0-pthread, checkouts of CompVis/latent-diffusion at $LDM
# (default /tmp/ldm) and ThisisBillhe/EfficientDM at $EDM (default /tmp/edm_ref), the peer folder
# at $PEER (default /work/shared/peer); the Inception weights: bench/inception's default (the
# parity fixture under EFFDM_SHARED_DIR) or $INCEPTION_WEIGHTS. Every timed run is under the same
# OMP_WAIT_POLICY (PASSIVE unless set, as bench_peer.sh).
set -eu
cd "$(dirname "$0")/.."
THREADS=2
QUICK=0
MD=
CIN256=0
usage() { echo "usage: $0 [--quick] [--threads N] [--md FILE] [--cin256]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --threads) [ $# -ge 2 ] || usage; THREADS="$2"; shift 2 ;;
        --md) [ $# -ge 2 ] || usage; MD="$2"; shift 2 ;;
        --cin256) CIN256=1; shift ;;
        *) usage ;;
    esac
done
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
PEER="${PEER:-/work/shared/peer}"
export LDM="${LDM:-/tmp/ldm}" EDM="${EDM:-/tmp/edm_ref}" PEER
# the omegaconf stand-in for CompVis's UNetModel (bench/peer_cin256.py does not add it itself)
PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)/scripts/teachers"
export PYTHONPATH
for b in build/effdm build/bench/finetune build/bench/sample build/bench/qsample build/bench/inception; do
    [ -x "$b" ] || { echo "$0: $b not built (cmake --build build)" >&2; exit 2; }
done
[ -d "$LDM/ldm" ] || { echo "$0: no CompVis checkout at $LDM (set LDM)" >&2; exit 2; }
[ -d "$EDM/quant_scripts" ] || { echo "$0: no EfficientDM checkout at $EDM (set EDM)" >&2; exit 2; }
TMP=$(mktemp -d /tmp/effdm_bench_all_XXXXXX)
trap 'rm -rf "$TMP"' EXIT
ROWS="$TMP/rows"
: > "$ROWS"

# run NAME CMD...: CMD's stdout to $TMP/NAME.out (stderr .err); on failure both tails and exit
run() {
    name="$1"; shift
    echo "== $name: $*" >&2
    if ! "$@" > "$TMP/$name.out" 2> "$TMP/$name.err"; then
        echo "$0: $name failed: $*" >&2
        tail -n 20 "$TMP/$name.out" "$TMP/$name.err" >&2
        exit 1
    fi
}
# row MEASURE PYTORCH EFFDM RATIO TARGET: a table row; RATIO "-" when there is none, TARGET ">= x"
# (plain numbers in the PyTorch / effdm columns are printed with 4 significant digits)
row() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" |
        awk -F'\t' -v OFS='\t' '{ for (i = 2; i <= 3; i++) if ($i != "" && $i + 0 == $i) $i = sprintf("%.4g", $i); print }' \
        >> "$ROWS"
}
num() { awk -v x="$1" 'BEGIN { exit !(x + 0 == x && x > 0) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
     "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|amx_tile)$' | tr '\n' ' ')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "mode: $([ $QUICK = 1 ] && echo quick || echo full), threads $THREADS, OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
/usr/bin/python3 - <<'EOF' || echo "torch BLAS: (could not be read)"
import torch
torch.mm(torch.ones(64, 64), torch.ones(64, 64))
libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'blas' in l.lower() and '/' in l})
import re
show = torch.__config__.show()
cfg = re.findall(r'BLAS_INFO=\w+|CPU capability usage: \w+|USE_MKLDNN=\w+', show)
print('torch %s BLAS: %s (%s)' % (torch.__version__, ', '.join(libs) or 'none mapped', ', '.join(cfg)))
EOF
EFFDM_OPENBLAS=$(ldd build/effdm | awk '/openblas|libblas/ { print $3; exit }')
/usr/bin/python3 - "$EFFDM_OPENBLAS" <<'EOF' || echo "effdm BLAS: $EFFDM_OPENBLAS"
import ctypes, os, sys
lib = ctypes.CDLL(sys.argv[1])
lib.openblas_get_config.restype = lib.openblas_get_corename.restype = ctypes.c_char_p
print('effdm BLAS: %s (%s), %s, kernels %s (OPENBLAS_CORETYPE=%s); effdm runs it single-threaded inside its own '
      'OpenMP GEMM tiles when its FP32 GEMM kernel (below) is blas' % (sys.argv[1], os.path.realpath(sys.argv[1]), lib.openblas_get_config().decode(),
                             lib.openblas_get_corename().decode(), os.environ.get('OPENBLAS_CORETYPE', 'unset')))
EOF

# ---- distillation step: bench_peer.sh (effdm, peer, effdm, effdm) ----
if [ $QUICK = 1 ]; then EPOCHS=1; else EPOCHS=2; fi
run step scripts/bench_peer.sh --threads "$THREADS" --epochs "$EPOCHS"
sed 's/^/  /' "$TMP/step.out"
# "ratio  peer / effdm = R  (effdm E s/step, peer P s/step; target >= 2)"
E=$(awk '/^ratio/ { print $8 }' "$TMP/step.out")
P=$(awk '/^ratio/ { print $11 }' "$TMP/step.out")
num "$E" && num "$P" || { echo "$0: cannot read bench_peer.sh's ratio line" >&2; exit 1; }
row "W4A4 distillation step, batch 2 (s/step)" "$P" "$E" "$(ratio "$P" "$E")" ">= 10"

# ---- FP UNet forward and 50-step DDIM: peer_sample.py and bench/sample ----
if [ $QUICK = 1 ]; then REPS=1; else REPS=5; fi
run peer_sample /usr/bin/python3 bench/peer_sample.py --threads "$THREADS" --reps "$REPS"
if [ $QUICK = 1 ]; then SREPS=1; else SREPS=3; fi
run sample build/bench/sample --threads "$THREADS" --reps "$SREPS"
sed 's/^/  torch: /' "$TMP/peer_sample.err" | grep -E 'unet|ddim'
sed 's/^/  effdm: /' "$TMP/sample.out"
pj() { tail -n 1 "$TMP/peer_sample.out" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
for b in 16 64; do
    P=$(pj "unet_b${b}_ms")
    E=$(awk -v b="$b" '/^unet forward/ && $4 == b { print $5 }' "$TMP/sample.out")
    num "$P" && num "$E" || { echo "$0: cannot read the batch-$b UNet forward" >&2; exit 1; }
    row "FP UNet forward, batch $b (ms)" "$P" "$E" "$(ratio "$P" "$E")" ">= 2"
done
P=$(pj ddim50_64img_b64_s)
E=$(awk '/^ddim 50 steps/ && $9 == 64 { print $10 }' "$TMP/sample.out")
num "$P" && num "$E" || { echo "$0: cannot read the DDIM rows" >&2; exit 1; }
row "FP DDIM 50 steps, guidance 3, 64 images, batch 64 (s)" "$P" "$E" "$(ratio "$P" "$E")" ">= 2"

# ---- exports: calibrate-only W4A4 / W4A8, then bench/qsample ----
for q in w4a4 w4a4-static w4a8; do
    if [ $QUICK = 1 ]; then SMALL="--set calib.steps=50 --set calib.n_samples=4"; else SMALL=; fi
    # shellcheck disable=SC2086
    # no sampling-gain fits at export (minutes of sampling; a gain does not change the speed)
    run "calib_$q" build/effdm calibrate --config "configs/fmnist-ldm-$q.yaml" --set "run.out=$TMP/run_$q" \
        --set train.guidance_gain=off --set train.eps_gain=off $SMALL --threads "$THREADS"
    run "export_$q" build/effdm export --run "$TMP/run_$q" --out "$TMP/$q.safetensors"
done
if [ $QUICK = 1 ]; then ROUNDS=1; else ROUNDS=3; fi
run qsample build/bench/qsample --w4a8 "$TMP/w4a8.safetensors" --w4a4 "$TMP/w4a4.safetensors" \
    --extra "$TMP/w4a4-static.safetensors" --threads "$THREADS" --rounds "$ROUNDS"
sed 's/^/  effdm: /' "$TMP/qsample.out"
KERNEL=$(sed -n 's/.*kernel=\([^ ]*\).*/\1/p' "$TMP/qsample.out" | head -n 1)
# the wall-time rows: "<label: two words> fwd-ms speedup ddim-s speedup"
qwall() { awk -v a="$1" -v b="$2" '/^wall time/ { w = 1; next } /^(CPU time|per round)/ { w = 0 }
                                   w && $1 == a && $2 == b { print $(NF - 1) }' "$TMP/qsample.out"; }
FP=$(qwall fp32 teacher)
for q in W4A4 W4A4-static W4A8; do
    Q=$(qwall "$(echo $q | tr "[:upper:]" "[:lower:]")" int)
    num "$FP" && num "$Q" || { echo "$0: cannot read bench/qsample's wall-time rows" >&2; exit 1; }
    case $q in
        W4A4) T=">= 3"; L="W4A4 export (default config, per-token ranges)" ;;
        W4A4-static) T=">= 3"; L="W4A4 export (static ranges)" ;;
        *) T="-"; L="$q export" ;;
    esac
    row "$L ($KERNEL kernel) sampling: DDIM 20 steps, guidance 3, 64 images (s: effdm FP / ${q%-static})" \
        "-" "$(awk -v a="$FP" -v b="$Q" 'BEGIN { printf "%.4g / %.4g", a, b }')" "$(ratio "$FP" "$Q")" "$T"
done
# the bound: the teacher with the W4A4 export's quantized layers costing nothing (bench/qsample)
Q=$(qwall free layers)
num "$Q" || { echo "$0: cannot read bench/qsample's bound row" >&2; exit 1; }
row "Bound for any W4A4 kernel: the same sampling with the quantized layers free (s: effdm FP / free layers)" \
    "-" "$(awk -v a="$FP" -v b="$Q" 'BEGIN { printf "%.4g / %.4g", a, b }')" "$(ratio "$FP" "$Q")" "-"

# ---- Inception ----
if [ $QUICK = 1 ]; then IB=8; IS=1; else IB=32; IS=3; fi
# shellcheck disable=SC2086
run inception build/bench/inception ${INCEPTION_WEIGHTS:+--weights "$INCEPTION_WEIGHTS"} \
    --batches "$IB" --threads-list "$THREADS" --seconds "$IS"
sed 's/^/  effdm: /' "$TMP/inception.out"
E=$(awk '/^inception  threads/ { print $8 }' "$TMP/inception.out" | tail -n 1)
num "$E" || { echo "$0: cannot read bench/inception's images/s" >&2; exit 1; }
row "FID Inception 299x299, batch $IB, $THREADS threads (images/s)" "-" "$E" "-" ">= 20 images/s"

# ---- cin256 (opt-in) ----
if [ $CIN256 = 1 ]; then
    run cin_effdm build/bench/finetune --model cin256 --threads "$THREADS" --steps 3 --warmup 1
    run cin_peer /usr/bin/python3 bench/peer_cin256.py --threads "$THREADS" --batch 2 --steps 4
    E=$(awk '/^  s\/step +median/ { print $3 }' "$TMP/cin_effdm.out")
    P=$(tail -n 1 "$TMP/cin_peer.out" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['sec_per_step_median'])")
    EM=$(awk '/^  memory +peak RSS/ { for (i = 1; i < NF; i++) if ($i == "MiB") { print $(i - 1); exit } }' "$TMP/cin_effdm.out")
    PM=$(tail -n 1 "$TMP/cin_peer.out" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['peak_rss_mb'])")
    num "$E" && num "$P" && num "$EM" && num "$PM" || { echo "$0: cannot read the cin256 rows" >&2; exit 1; }
    row "cin256-v2 W4A4 step, random weights, batch 2 (s/step)" "$P" "$E" "$(ratio "$P" "$E")" ">= 2"
    row "cin256-v2 W4A4 step, peak RSS (MiB; effdm: of the steps)" "$PM" "$EM" "-" "<= 8192 MiB"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "integer kernel: $KERNEL (EFFDM_KERNEL=${EFFDM_KERNEL:-unset: the runtime pick})"
GEMM=$(sed -n 's/.* gemm=\([^ ]*\).*/\1/p' "$TMP/sample.out" | head -n 1)
echo "effdm FP32 GEMM kernel: $GEMM (EFFDM_SGEMM=${EFFDM_SGEMM:-unset: the runtime pick}; avx512 is effdm's own, blas is the OpenBLAS above)"

# ---- the table: met? compares the ratio column (the effdm column for an absolute target) ----
awk -F'\t' -v quick="$QUICK" '
function met(r, e, t,   v) {
    v = (r == "-") ? e : r
    split(t, a, " ")
    if (t == "-") return "-"
    if (a[1] == "<=") return (v + 0 <= a[2] + 0) ? "yes" : "no"
    return (v + 0 >= a[2] + 0) ? "yes" : "no"
}
BEGIN { print "| measure | PyTorch | effdm | ratio | target | met? |"; print "|---|---:|---:|---:|---|---|" }
{ printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, met($4, $3, $5) }
END { if (quick) print "\n(--quick: few repetitions; the numbers are rough)" }' "$ROWS" > "$TMP/table.md"
echo
cat "$TMP/table.md"
if [ -n "$MD" ]; then cp "$TMP/table.md" "$MD.tmp" && mv "$MD.tmp" "$MD"; fi
