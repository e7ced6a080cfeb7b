#!/bin/bash
# The map + model network fine-tuned on the engine's training maps and the MD-labelled atlas_train maps together
# (reports/md_labels.md, "Mixed"): the engine-trained network (BASE, the 5/6/7 Å map + model files it was exported
# as) at the gentle learning rate, both sample sets in one folder (symlinks), a 3-fold CV over all their proteins
# (not protein-disjoint from BASE, which saw every engine protein), the calibration fitted on it.
# Run from the repository root: BASE=<folder of the engine-trained models> training/md_mix.sh (about 25 min on 2
# cores); outputs in training/runs/md_mix/ (rerun to resume).
set -euo pipefail
PY=${PY:-../.venv/bin/python}
LR=${LR:-2e-4}
OUT=${OUT:-runs/md_mix}
: "${BASE:?give BASE, the folder of the engine-trained models the fine-tune starts from}"
cd "$(dirname "$0")"
[ -d data/atlas_samples ] || $PY -m defmap_train atlas-data
[ -d data/samples ] || { $PY -m defmap_train ensembles; $PY -m defmap_train dataset --maps-per-protein 4 --dw-maps 2 \
                           --clean-maps 1 --resolutions 5,6,7; }
mkdir -p data/mixed_samples data/mixed_records "$OUT"
for d in samples atlas_samples; do ln -sf "$PWD/data/$d"/*.npz data/mixed_samples/; done
for d in ensembles atlas_records; do ln -sf "$PWD/data/$d"/*.npz data/mixed_records/; done
out=$OUT/mapmodel
$PY -m defmap_train train --kinds map+model --threads 2 --out "$out" --resolution 5 --folds 3 --eval-maps 2 \
   --cv-minutes 3 --minutes 5 --map-kinds map,dw,clean --fit-map-kinds dw,clean --data data/mixed_samples \
   --ensembles data/mixed_records --init-onnx "$BASE/defmap_mapmodel_5A.onnx" --sd-slope 0.2 --sd-power 0.25 \
   --lr "$LR"
for r in 6 7; do
  $PY -m defmap_train train --kinds map+model --threads 2 --out "$out" --resolution $r --cv-minutes 0 --minutes 2 \
     --init-checkpoint "$out/map+model_5A.pt" --calibration-from "$out/train_5A.json" --map-kinds map,dw,clean \
     --data data/mixed_samples --ensembles data/mixed_records --lr "$LR"
done
echo done
