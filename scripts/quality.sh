#!/usr/bin/env bash
# quality.sh: the quality table of docs/RESULTS.md, resumable.
#
#   scripts/quality.sh [VARIANT...]        # default: every scripts/quality/variants/*.yaml, and fp
#   SEEDS="0 1 2" N=1000 scripts/quality.sh fp ptq-w4a4 effdm-w4a4
#   scripts/quality.sh --report            # only regenerate docs/RESULTS.md from the cache
#
# A variant NAME is the run config scripts/quality/variants/NAME.yaml (its run.out is replaced
# by $QUALITY_DIR/runs/NAME); the variant `fp` is the FP teacher; a variant named fp-* is an
# FP checkpoint (its yaml's model.ldm_config and model.ckpt, e.g. a pruned one from
# scripts/quality/prune.sh), sampled as it is: no finetune, no export. For each other variant:
#   finetune (calibrates first; train.epochs 0 = naive PTQ) under /usr/bin/time -v
#     -> $Q/runs/NAME/, $Q/meta/NAME.finetune.json (wall seconds, peak RSS)
#   export (--epoch best when train.select_epoch is best_val or best_sampled) -> $Q/models/NAME.safetensors,
#     $Q/meta/NAME.export.json (file size, UNet part size)
#   for each seed S: sample N class-balanced images, DDIM 20 steps, eta 0, guidance 3.0 (the
#     paper protocol) -> $Q/samples/NAME/sS_nN/
#     eval (FID(judge), IS, precision/recall, class accuracy) -> $Q/eval/NAME/sS_nN.json
#     same-noise comparison with fp's samples of the same seed (pixel RMSE, judge class
#     agreement, accuracies, FIDs; `effdm compare` with the model's samples as A, fp's as B)
#     -> $Q/cmp/NAME/sS_nN.json
#     eval against the FP teacher's own samples (FID to FP: how far the model's sample
#     distribution is from the one it imitates) -> $Q/evalfp/NAME/sS_nN.json; the reference
#     is N FP samples for each seed of FPREF_SEEDS (seeds never used for evaluation, so no
#     image shares its noise with an evaluated one) -> $Q/fpref/<seeds>_nN.safetensors
# Every finished step is cached (a file is written under a .tmp name and renamed when done)
# and skipped when it exists; an interrupted finetune is continued with --resume.
# Finally scripts/quality/report.py writes docs/RESULTS.md from the cache.
# Another teacher: TEACHER=DIR (a CompVis config.yaml + model.ckpt, e.g. one made by
# scripts/teachers/train_teacher.py) samples the FP rows from it and points every variant's
# model.ldm_config / model.ckpt at it; the cache is then runs/quality-<DIR's name>.
# Environment: QUALITY_DIR (default runs/quality), SEEDS (default "0"), N (default 1000),
# FPREF_SEEDS (default "100 101 102 103 104"), EFFDM (default ./build/effdm),
# PY (default /usr/bin/python3). Run from the repository root.
set -euo pipefail

TEACHER=${TEACHER:-}
FPMODEL=()
if [[ -n $TEACHER ]]; then
    [[ -f $TEACHER/config.yaml && -f $TEACHER/model.ckpt ]] || { echo "quality.sh: TEACHER=$TEACHER: no config.yaml + model.ckpt there" >&2; exit 2; }
    TEACHER=$(cd "$TEACHER" && pwd)  # absolute: the variant configs are copied elsewhere
    Q=${QUALITY_DIR:-runs/quality-$(basename "$TEACHER")}
    FPMODEL=(--ldm-config "$TEACHER/config.yaml" --ckpt "$TEACHER/model.ckpt")
else
    Q=${QUALITY_DIR:-runs/quality}
fi
SEEDS=${SEEDS:-0}
N=${N:-1000}
FPREF_SEEDS=${FPREF_SEEDS:-100 101 102 103 104}
EFFDM=${EFFDM:-./build/effdm}
PY=${PY:-/usr/bin/python3}
HERE=$(cd "$(dirname "$0")" && pwd)
VDIR=$HERE/quality/variants
REF=models/zoo/fmnist-ldm/fmnist_test_judge.safetensors
STEPS=20 ETA=0 SCALE=3

mkdir -p "$Q"/{runs,cfg,models,meta,samples,eval,evalfp,fpref,cmp,logs}
Q=$(cd "$Q" && pwd)  # absolute: the FP reference links its sample folders by path
FPREF=$Q/fpref/$(echo $FPREF_SEEDS | tr ' ' '-')_n$N.safetensors
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# time_json LOG OUT: wall seconds and peak RSS (KiB) from /usr/bin/time -v output
time_json() {
    "$PY" - "$1" "$2" <<'EOF'
import json, re, sys
t = open(sys.argv[1], errors="replace").read()
w = re.findall(r"Elapsed \(wall clock\) time.*: (\S+)", t)[-1].split(":")
sec = sum(float(x) * 60 ** i for i, x in enumerate(reversed(w)))
rss = int(re.findall(r"Maximum resident set size \(kbytes\): (\d+)", t)[-1])
cal = re.findall(r"calibrated in ([0-9.]+) s", t)
json.dump({"wall_s": sec, "peak_rss_kb": rss, "calib_s": float(cal[-1]) if cal else None},
          open(sys.argv[2] + ".tmp", "w"))
EOF
    mv "$2.tmp" "$2"
}

finetune() {  # NAME
    local name=$1 cfg=$Q/cfg/$1.yaml run=$Q/runs/$1
    [[ -f $Q/meta/$name.finetune.json ]] && return 0
    sed '/^run:/,$d' "$VDIR/$name.yaml" > "$cfg"
    printf 'run:\n  out: %s\n' "$run" >> "$cfg"
    # the variant's paths are relative to the repository root; the copy lives elsewhere
    sed -i -E "s#^(\s*(ldm_config|ckpt):\s*)(models/|runs/)#\1$PWD/\3#" "$cfg"
    if [[ -n $TEACHER ]]; then  # the variant's model lines point at the test teacher
        sed -i -e "s|^\(\s*ldm_config:\).*|\1 $TEACHER/config.yaml|" \
               -e "s|^\(\s*ckpt:\).*|\1 $TEACHER/model.ckpt|" "$cfg"
        grep -q "ckpt: $TEACHER/model.ckpt" "$cfg" || { echo "quality.sh: $VDIR/$name.yaml has no model.ckpt line" >&2; exit 2; }
    fi
    local tlog=$Q/logs/$name.finetune.log
    log "$name: finetune"
    if [[ -f $run/state.safetensors ]] && grep -q . "$run/log.csv" 2>/dev/null; then
        /usr/bin/time -v "$EFFDM" finetune --resume "$run" --config "$cfg" >> "$tlog" 2>&1
    else
        /usr/bin/time -v "$EFFDM" finetune --config "$cfg" > "$tlog" 2>&1
    fi
    time_json "$tlog" "$Q/meta/$name.finetune.json"
}

export_model() {  # NAME
    local name=$1 run=$Q/runs/$1 out=$Q/models/$1.safetensors epoch=last
    [[ -f $out && -f $Q/meta/$name.export.json ]] && return 0
    if grep -Eq '^\s*select_epoch:\s*best_(val|sampled)' "$run/config.yaml" && [[ -f $run/best.safetensors ]]; then
        epoch=best
    fi
    log "$name: export --epoch $epoch"
    "$EFFDM" export --run "$run" --out "$out" --epoch $epoch > "$Q/logs/$name.export.log" 2>&1
    "$PY" - "$out" "$Q/logs/$name.export.log" "$epoch" "$Q/meta/$name.export.json" <<'EOF'
import json, os, re, sys
t = open(sys.argv[2], errors="replace").read()
m = re.search(r"UNet part: (\d+) bytes .*?vs FP32 UNet (\d+) bytes", t)
json.dump({"file_bytes": os.path.getsize(sys.argv[1]), "epoch": sys.argv[3],
           "unet_bytes": int(m.group(1)) if m else None, "unet_fp32_bytes": int(m.group(2)) if m else None,
           "export_log": t.strip().splitlines()[-3:]}, open(sys.argv[4] + ".tmp", "w"))
EOF
    mv "$Q/meta/$name.export.json.tmp" "$Q/meta/$name.export.json"
}

# an fp-* variant's model: its yaml's model.ldm_config / model.ckpt (relative to the repository root)
fp_checkpoint() {  # NAME
    local key v out=()
    for key in ldm_config ckpt; do
        v=$(sed -n -E "s#^\s*$key:\s*(\S+).*#\1#p" "$VDIR/$1.yaml" | head -1)
        [[ -f $v ]] || { echo "quality.sh: $VDIR/$1.yaml: model.$key '$v' does not exist" >&2; exit 2; }
        out+=("--${key/_/-}" "$(cd "$(dirname "$v")" && pwd)/$(basename "$v")")
    done
    echo "${out[@]}"
}

sample() {  # NAME SEED DIR
    local name=$1 s=$2 dir=$3 tag=s$2_n$N model=("${FPMODEL[@]}")
    if [[ $name == fp-* ]]; then read -ra model <<< "$(fp_checkpoint "$name")"
    elif [[ $name != fp ]]; then model=(--model "$Q/models/$name.safetensors"); fi
    if [[ ! -d $dir ]]; then
        log "$name: sample seed $s, $N images"
        rm -rf "$dir.tmp"; mkdir -p "$(dirname "$dir")"
        "$EFFDM" sample "${model[@]}" --n "$N" --steps $STEPS --eta $ETA --scale $SCALE \
            --seed "$s" --out "$dir.tmp" > "$Q/logs/$name.$tag.sample.log" 2>&1
        mv "$dir.tmp" "$dir"
    fi
}

fp_reference() {  # the statistics of the FP teacher's samples of FPREF_SEEDS -> $FPREF
    [[ -f $FPREF ]] && return 0
    local s links=$FPREF.d
    rm -rf "$links"; mkdir -p "$links"
    for s in $FPREF_SEEDS; do
        sample fp "$s" "$Q/samples/fpref/s${s}_n$N"
        ln -s "$Q/samples/fpref/s${s}_n$N" "$links/s$s"
    done
    log "fp reference: stats of seeds $FPREF_SEEDS"
    "$EFFDM" stats --images "$links" --out "$FPREF.tmp.safetensors" > "$Q/logs/fpref.stats.log" 2>&1
    mv "$FPREF.tmp.safetensors" "$FPREF"
    rm -rf "$links"
}

sample_eval() {  # NAME SEED
    local name=$1 s=$2 tag=s$2_n$N
    local dir=$Q/samples/$name/$tag
    sample "$name" "$s" "$dir"
    mkdir -p "$Q/eval/$name" "$Q/evalfp/$name" "$Q/cmp/$name"
    if [[ ! -f $Q/eval/$name/$tag.json ]]; then
        log "$name: eval seed $s"
        "$EFFDM" eval --samples "$dir" --ref $REF --json "$Q/eval/$name/$tag.json.tmp" \
            > "$Q/logs/$name.$tag.eval.log" 2>&1
        mv "$Q/eval/$name/$tag.json.tmp" "$Q/eval/$name/$tag.json"
    fi
    if [[ ! -f $Q/evalfp/$name/$tag.json ]]; then
        fp_reference
        log "$name: eval seed $s against the FP teacher's samples"
        "$EFFDM" eval --samples "$dir" --ref "$FPREF" --json "$Q/evalfp/$name/$tag.json.tmp" \
            > "$Q/logs/$name.$tag.evalfp.log" 2>&1
        mv "$Q/evalfp/$name/$tag.json.tmp" "$Q/evalfp/$name/$tag.json"
    fi
    if [[ $name != fp && ! -f $Q/cmp/$name/$tag.json ]]; then
        sample_eval fp "$s"
        log "$name: same-noise comparison with fp, seed $s"
        "$EFFDM" compare "$dir" "$Q/samples/fp/$tag" --ref $REF --json "$Q/cmp/$name/$tag.json" \
            > "$Q/logs/$name.$tag.cmp.log" 2>&1
    fi
}

report() {  # docs/RESULTS.md is the default cache's; other caches have their own report modes
    [[ -n $TEACHER ]] && return 0  # report.py --teachers
    if [[ -n ${QUALITY_DIR:-} && $(cd "$QUALITY_DIR" && pwd) != $(pwd)/runs/quality ]]; then
        log "QUALITY_DIR=$QUALITY_DIR: docs/RESULTS.md left alone (e.g. report.py --quantizers $QUALITY_DIR docs/RESULTS_QUANTIZERS.md)"
        return 0
    fi
    "$PY" "$HERE/quality/report.py" "$Q" docs/RESULTS.md
}

if [[ ${1:-} == --report ]]; then report; exit 0; fi
if [[ $# -eq 0 ]]; then
    set -- fp
    for f in "$VDIR"/*.yaml; do set -- "$@" "$(basename "$f" .yaml)"; done
fi
for name in "$@"; do
    if [[ $name != fp ]]; then
        [[ -f $VDIR/$name.yaml ]] || { echo "quality.sh: no $VDIR/$name.yaml" >&2; exit 2; }
    fi
    if [[ $name != fp && $name != fp-* ]]; then
        finetune "$name"
        export_model "$name"
    fi
    for s in $SEEDS; do sample_eval "$name" "$s"; done
done
report
