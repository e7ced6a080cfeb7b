#!/usr/bin/env bash
# Reproduce the shipped models from nothing (about 100 min on a free 2-core CPU, plus about 15 min for the data).
# Every step is `defmap-train` (pipeline.py); the shipped lineage is three runs of one recipe and their soup:
#   scratch  both kinds from random weights on the frame-averaged maps
#   warm     warm-started from scratch fold by fold and final by final, on frame-averaged + Debye-Waller maps
#   shipped  the weight average of the two (`soup`), then calibrated on its CV and exported without training;
#            once installed, `defmap-train md-calibrate` refits the weights and the SD on atlas_train's real MD
# Each step caches its output (delete data/ or $RUNS/<stage> to redo; `train` loads checkpoints that exist, so an
# interrupted run resumes).  Budgets are wall-clock minutes: the two kinds train side by side with one thread each,
# so results depend on the machine and its load.  Everything goes to data/ and $RUNS; the shipped files are installed
# by hand (onnx_models/MODEL_CARD.md, "Reproduce"), so this script never writes onnx_models/.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../.venv/bin/python}
RUNS=${RUNS:-runs}

[ -d data/ensembles ] || $PY -m defmap_train ensembles               # ANM + per-protein deviations
# per protein: 4 frame-averaged maps, 2 Debye-Waller maps, all with confounders, and 1 clean Debye-Waller map
$PY -m defmap_train dataset --maps-per-protein 4 --dw-maps 2 --clean-maps 1 --resolutions 5,6,7

kind_dir() { [ "$2" = map ] && echo "$1/map" || echo "$1/mapmodel"; }   # RUN KIND -> the kind's folder

# one kind of one run: CV + final model at 5 Å, then 6 and 7 Å fine-tunes of the 5 Å final model (no CV; they take
# its calibration).  Args: RUN KIND CV_MINUTES MINUTES FT_MINUTES MAP_KINDS [INIT_RUN] [SD_SLOPE SD_POWER]
one_kind() {
    local run=$1 kind=$2 cv=$3 min=$4 ft=$5 map_kinds=$6 init=${7:-} slope=${8:-0} power=${9:-1} out warm=()
    out=$(kind_dir "$run" "$kind")
    if [ -n "$init" ]; then  # fold k from INIT_RUN's fold k: the CV stays protein-disjoint
        warm=(--init-cv "$(kind_dir "$init" "$kind")/cv" --init-checkpoint "$(kind_dir "$init" "$kind")/${kind}_5A.pt")
    fi
    $PY -m defmap_train train --kinds "$kind" --threads 1 --out "$out" --resolution 5 --folds 3 --eval-maps 2 \
        --cv-minutes "$cv" --minutes "$min" --map-kinds "$map_kinds" --sd-slope "$slope" --sd-power "$power" "${warm[@]}"
    for r in 6 7; do
        $PY -m defmap_train train --kinds "$kind" --threads 1 --out "$out" --resolution $r --cv-minutes 0 \
            --minutes "$ft" --init-checkpoint "$out/${kind}_5A.pt" --calibration-from "$out/train_5A.json" \
            --map-kinds "$map_kinds"
    done
}
both_kinds() {  # the two kinds side by side, one thread each
    mkdir -p "$1"
    one_kind "$1" map+model "${@:2}" > "$1/mapmodel.log" 2>&1 &
    local a=$!
    one_kind "$1" map "${@:2}" > "$1/map.log" 2>&1 &
    local b=$!
    wait $a
    wait $b
}

both_kinds "$RUNS/scratch" 10 15 5 map                        # about 65 min
both_kinds "$RUNS/warm" 4 6 3 map,dw,clean "$RUNS/scratch"    # about 30 min
[ -d "$RUNS/shipped/map" ] || $PY -m defmap_train soup "$RUNS/scratch" "$RUNS/warm" --out "$RUNS/shipped"
both_kinds "$RUNS/shipped" 8 12 4 map,dw,clean                # checkpoints exist: CV predictions, calibration, export

echo "done: $RUNS/shipped/{map,mapmodel}/onnx/*.onnx (to install them and calibrate them on real MD with"
echo "defmap-train md-calibrate: onnx_models/MODEL_CARD.md, \"Reproduce\")"
