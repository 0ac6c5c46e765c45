#!/usr/bin/env bash
# End to end on synthetic data: rts synth -> rts prepare (chips with mask band, and a scene with
# vector labels) -> rts pretrain (nano, RGB, ~3 minutes on 2 CPU cores) -> rts evaluate -> summary.
# Usage: examples/quickstart.sh [OUTDIR]
set -euo pipefail
OUT="${1:-demo_out}"
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1. synthetic thaw-slump data (7 sites, chips + one 2048 x 2048 scene at 3 m)"
rts synth "$OUT/synth" --chips 70 --chip-size 256 --scenes 1 --scene-size 2048 --seed 0

echo
echo "== 2a. prepare the chips (the paper's layout: R,G,B,NDVI,NIR + mask band)"
rts prepare "$OUT/synth/chips" -o "$OUT/dataset_chips" --bands paper

SCENE=$(ls "$OUT"/synth/scenes/*.tif | head -n 1)
echo
echo "== 2b. prepare the large scene with vector labels (cut into 256 px chips, 25% overlap)"
rts prepare "$SCENE" --labels "${SCENE%.tif}.gpkg" -o "$OUT/dataset_scene" --bands planetscope4 \
    --chip-size 256 --overlap 0.25 --site "$(basename "${SCENE%.tif}" | cut -d_ -f3-)"

echo
echo "== 3. train a tiny model on the chips (nano preset, RGB, a couple of minutes on a CPU)"
rts pretrain --modality rgb --data "$OUT/dataset_chips" --preset nano -o "$OUT/runs/rgb" \
    --epochs 16 --batch-size 4 --lr 0.008 --warmup-steps 20 --workers 1 --val-every 4

echo
echo "== 4. evaluate it on the held-out test chips (COCO mask AP50, as in the paper)"
rts evaluate "$OUT/runs/rgb" --data "$OUT/dataset_chips" --split test \
    --errors "$OUT/runs/rgb/errors_test.gpkg" --min-score 0.3

echo
echo "== summary"
for ds in "$OUT/dataset_chips" "$OUT/dataset_scene"; do
  python - "$ds" <<'PY'
import json, sys, pathlib
ds = pathlib.Path(sys.argv[1])
n = {s: json.loads((ds / f"{s}.json").read_text()) for s in ("train", "val", "test")}
print(f"{ds}: " + ", ".join(f"{s} {len(d['images'])} chips / {len(d['annotations'])} slumps" for s, d in n.items()))
PY
done
echo "Open $SCENE and ${SCENE%.tif}.gpkg in QGIS to see the scene and its ground-truth slumps."
echo "Model bundle: $OUT/runs/rgb (rts info $OUT/runs/rgb); its errors on the test chips:"
echo "  $OUT/runs/rgb/errors_test.gpkg (layers true_positives, false_positives, missed) over $OUT/dataset_chips/chips"
echo "The demo model is tiny and trained for minutes: its AP50 is what it is. Real work: see README."
