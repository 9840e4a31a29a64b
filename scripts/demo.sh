#!/bin/sh
# demo.sh: effdm's main job on the shipped teacher, end to end, on a fresh clone.
#
#   ./scripts/demo.sh            # about 12 minutes on 2 cores (the export fits two gains)
#   N=200 ./scripts/demo.sh      # fewer samples per model (faster, noisier FID)
#
# Builds effdm when build/effdm is missing (./scripts/setup.sh: Debian packages + build), then:
#   1. samples N images from the FP teacher (DDIM 20 steps, eta 0, guidance 3, seed 0) and
#      evaluates them against the Fashion-MNIST test set;
#   2. fine-tunes the W4A4 student (configs/fmnist-ldm-w4a4.yaml into runs/demo-w4a4;
#      calibration first; an interrupted demo continues the run);
#   3. exports it (packed 4-bit weights) and samples and evaluates it on the same noise;
#   4. prints both evaluations side by side and where the grids are.
set -eu
cd "$(dirname "$0")/.."
N=${N:-1000}
E=./build/effdm
RUN=runs/demo-w4a4
[ -x "$E" ] || ./scripts/setup.sh

echo "== 1/4  the FP teacher: $N samples"
$E sample --n "$N" --steps 20 --scale 3 --seed 0 --out samples/demo-fp --eval fmnist
echo "== 2/4  fine-tuning the W4A4 student into $RUN"
if [ -f "$RUN/state.json" ]; then
    $E finetune --resume "$RUN"
else
    $E finetune --config configs/fmnist-ldm-w4a4.yaml --set run.out="$RUN"
fi
echo "== 3/4  export, then $N samples of the student (same seeds)"
$E export --run "$RUN" --out "$RUN.safetensors"
$E sample --model "$RUN.safetensors" --n "$N" --steps 20 --scale 3 --seed 0 --out samples/demo-w4a4 --eval fmnist

# one value of a flat eval.json ("key":<tab>value,)
val() { sed -n "s/^[[:space:]]*\"$2\":[[:space:]]*\([^,]*\),*$/\1/p" "$1"; }
echo "== 4/4  $N samples each, judge features, the same noise"
printf '%-16s %12s %12s\n' metric "FP teacher" "W4A4 export"
for k in fid is_mean precision recall class_accuracy; do
    printf '%-16s %12.4f %12.4f\n' "$k" "$(val samples/demo-fp/eval.json $k)" "$(val samples/demo-w4a4/eval.json $k)"
done
printf '%-16s %12s %12s\n' "file size" "$(du -h models/zoo/fmnist-ldm/model.ckpt | cut -f1)" "$(du -h "$RUN.safetensors" | cut -f1)"
echo "grids: samples/demo-fp/grid.png  samples/demo-w4a4/grid.png (one row per class)"
echo "FID on $N samples moves by about +-2 between seeds; docs/RESULTS.md has the paired protocol."
