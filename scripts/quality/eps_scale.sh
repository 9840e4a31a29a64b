#!/usr/bin/env bash
# eps_scale.sh: how much a 1% change of every step's eps moves the sample statistics
# (docs/RESULTS_TEACHERS.md, issue 19's diagnosis). Samples 1000 class-balanced images of seed 0
# with the quality protocol (DDIM 20 steps, eta 0, guidance 3) and `effdm sample --eps-scale G`,
# then evaluates them against the test set and against the teacher's own samples (the FP
# reference scripts/quality.sh made). Cached under $Q/epsscale/<tag>/.
#
#   TEACHER=/work/teachers/ssud3-2k scripts/quality/eps_scale.sh fp 1.01
#   TEACHER=/work/teachers/ssud3-2k scripts/quality/eps_scale.sh effdm-w4a4 0.99
#
# MODEL: fp (the teacher) or a variant whose export scripts/quality.sh made ($Q/models/NAME.safetensors).
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: TEACHER=DIR $0 fp|VARIANT GAIN" >&2; exit 2; }
TEACHER=${TEACHER:?TEACHER=DIR (a test teacher) is required}
Q=${QUALITY_DIR:-runs/quality-$(basename "$TEACHER")}
EFFDM=${EFFDM:-./build/effdm}
PY=${PY:-/usr/bin/python3}
name=$1 gain=$2
if [[ $name == fp ]]; then model=(--ldm-config "$TEACHER/config.yaml" --ckpt "$TEACHER/model.ckpt")
else model=(--model "$Q/models/$name.safetensors"); fi
fpref=$(ls "$Q"/fpref/*_n1000.safetensors | head -1)
d=$Q/epsscale/$name-g$gain
mkdir -p "$d"
if [[ ! -d $d/s ]]; then
    "$EFFDM" sample "${model[@]}" --n 1000 --steps 20 --eta 0 --scale 3 --seed 0 --eps-scale "$gain" \
        --out "$d/s.tmp" > "$d/sample.log" 2>&1
    mv "$d/s.tmp" "$d/s"
fi
[[ -f $d/eval.json ]] || "$EFFDM" eval --samples "$d/s" --ref models/zoo/fmnist-ldm/fmnist_test_judge.safetensors \
    --json "$d/eval.json" > "$d/eval.log" 2>&1
[[ -f $d/evalfp.json ]] || "$EFFDM" eval --samples "$d/s" --ref "$fpref" --json "$d/evalfp.json" > "$d/evalfp.log" 2>&1
"$PY" - "$d" "$name" "$gain" <<'PYEOF'
import json, sys
d, name, gain = sys.argv[1:]
a = json.load(open(d + "/eval.json")); b = json.load(open(d + "/evalfp.json"))
acc = a.get("class_accuracy")
print(f"{name} eps x{gain}: FID {a['fid']:.2f}  precision {a['precision']:.3f}  recall {a['recall']:.3f}  "
      f"class acc {acc if acc is None else round(acc, 3)}  FID to FP {b['fid']:.2f}")
PYEOF
