#!/usr/bin/env bash
# End to end on synthetic data: rts synth -> rts prepare (chips with mask band, and a scene with
# vector labels) -> summary. Usage: examples/quickstart.sh [OUTDIR]
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
echo "The datasets (chips/, train.json, manifest.yaml) are ready for 'rts pretrain' (coming next)."
