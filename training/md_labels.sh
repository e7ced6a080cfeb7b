#!/bin/bash
# The MD-label variants (reports/md_labels.md; the shipped map + model files are the SOUP=1 result of the LR=2e-4
# line below, the fine-tunes alone were not shipped): the engine-trained networks fine-tuned on engine maps
# of the atlas_train chains labelled by their ATLAS MD (defmap-train atlas-data), protein-disjoint 3-fold CV on
# those chains, the calibration fitted on it; both kinds side by side, one thread each (about 25 min on 2 cores).
# Run from the repository root: training/md_labels.sh; outputs in training/runs/md/ (rerun to resume).
# LR=2e-4 OUT=runs/md_lr KINDS=mapmodel training/md_labels.sh: the gentler fine-tune of the map + model kind alone;
# SOUP=1 then averages each fine-tuned checkpoint with the model it started from (soup) and calibrates and exports
# the average on the same CV (OUT_soup/mapmodel/onnx).  BASE: the exported models the fine-tune starts from.
# MIX=1 LR=2e-4 OUT=runs/md_mix KINDS=mapmodel THREADS=2 BASE=<the engine-trained models> training/md_labels.sh:
# the fine-tune on the engine's training maps (engine labels, frame-averaged maps too) and the MD-labelled ones
# together, both sample sets in one folder (symlinks); its CV is over all their proteins, not protein-disjoint from
# BASE, which saw every engine protein (reports/md_labels.md, last section).  THREADS: torch threads per kind.
set -euo pipefail
PY=${PY:-../.venv/bin/python}
LR=${LR:-1e-3}
OUT=${OUT:-runs/md}
KINDS=${KINDS:-mapmodel map}
BASE=${BASE:-../onnx_models}
SOUP=${SOUP:-0}
MIX=${MIX:-0}
THREADS=${THREADS:-1}
cd "$(dirname "$0")"
[ -d data/atlas_samples ] || $PY -m defmap_train atlas-data
DATA=data/atlas_samples RECORDS=data/atlas_records MAP_KINDS=dw,clean
if [ "$MIX" = 1 ]; then
  [ -d data/samples ] || { $PY -m defmap_train ensembles; $PY -m defmap_train dataset --maps-per-protein 4 \
                             --dw-maps 2 --clean-maps 1 --resolutions 5,6,7; }
  mkdir -p data/mixed_samples data/mixed_records
  for d in samples atlas_samples; do ln -sf "$PWD/data/$d"/*.npz data/mixed_samples/; done
  for d in ensembles atlas_records; do ln -sf "$PWD/data/$d"/*.npz data/mixed_records/; done
  DATA=data/mixed_samples RECORDS=data/mixed_records MAP_KINDS=map,dw,clean
fi

one() {
  local kind=$1 dir=$2 onnx=$3 slope=$4 power=$5
  local out=$OUT/$dir
  $PY -m defmap_train train --kinds "$kind" --threads "$THREADS" --out "$out" --resolution 5 --folds 3 \
     --eval-maps 2 --cv-minutes 3 --minutes 5 --map-kinds "$MAP_KINDS" --fit-map-kinds dw,clean --data "$DATA" \
     --ensembles "$RECORDS" --init-onnx $BASE/${onnx}_5A.onnx --sd-slope $slope --sd-power $power --lr "$LR"
  for r in 6 7; do
    $PY -m defmap_train train --kinds "$kind" --threads "$THREADS" --out "$out" --resolution $r --cv-minutes 0 \
       --minutes 2 --init-checkpoint "$out/${kind}_5A.pt" --calibration-from "$out/train_5A.json" \
       --map-kinds "$MAP_KINDS" --data "$DATA" --ensembles "$RECORDS" --lr "$LR"
  done
}
mkdir -p "$OUT"
pids=()
for k in $KINDS; do
  case $k in
    mapmodel) one map+model mapmodel defmap_mapmodel 0.2 0.25 > "$OUT/mapmodel.log" 2>&1 & ;;
    map) one map map defmap 0.3 0.75 > "$OUT/map.log" 2>&1 & ;;
  esac
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done

calibrate() {  # the soup's CV (fold checkpoints exist, so nothing trains), then its 6 and 7 A exports
  local kind=$1 out=$2 slope=$3 power=$4
  $PY -m defmap_train train --kinds "$kind" --threads 2 --out "$out" --resolution 5 --folds 3 --eval-maps 2 \
     --cv-minutes 3 --minutes 5 --map-kinds dw,clean --fit-map-kinds dw,clean --data data/atlas_samples \
     --ensembles data/atlas_records --sd-slope $slope --sd-power $power
  for r in 6 7; do
    $PY -m defmap_train train --kinds "$kind" --threads 2 --out "$out" --resolution $r --cv-minutes 0 --minutes 2 \
       --init-checkpoint "$out/${kind}_5A.pt" --calibration-from "$out/train_5A.json" --map-kinds dw,clean \
       --data data/atlas_samples --ensembles data/atlas_records
  done
}
if [ "$SOUP" = 1 ]; then
  [ -d "${OUT}_soup" ] || $PY -m defmap_train soup "$OUT" "$BASE" --out "${OUT}_soup"
  for k in $KINDS; do
    case $k in
      mapmodel) calibrate map+model "${OUT}_soup/mapmodel" 0.2 0.25 ;;
      map) calibrate map "${OUT}_soup/map" 0.3 0.75 ;;
    esac
  done
fi
echo done
# then, from the repository root, the report's numbers:
#   .venv/bin/defmap-train validate-md --models training/runs/md/mapmodel/onnx training/runs/md/map/onnx \
#       --maps-per-variant 2 --image-maps 1 --residue-atoms backbone --out training/reports/validate_md_md_labels
