#!/usr/bin/env bash
# The main job on an embedded default: synthetic M3DS -> train the demo preset (tiny LLaVA + real LiteMedSAM)
# through sim4seg.train -> evaluate with sim4seg.eval -> results table, overlays, and the learned-vs-baseline check.
# Reruns skip what is done. Outputs: runs/demo (checkpoints, metrics.jsonl), results/demo (metrics.json/.md, overlays).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
start=$(date +%s)
# Variants (README, "Clinical outputs"): DEMO_NAME names runs/ and results/, DEMO_DATA the data folder,
# DEMO_SYNTH its extra synth flags (e.g. "--negatives 0.25 --multi-target 0.25"), DEMO_TRAIN extra training
# overrides (e.g. "loss.region=1.0").
name=${DEMO_NAME:-demo}; data=${DEMO_DATA:-data/synthetic}
[ -f "$data/records.jsonl" ] || sim4seg data synth --out "$data" --n 80 --seed 0 ${DEMO_SYNTH:-}
if [ ! -f "runs/$name/finished.json" ]; then  # written last: the run is complete
  resume=false; [ -f "runs/$name/checkpoints/latest" ] && resume=true
  python -m sim4seg.train experiment=demo data.root="$data" train.output_dir="runs/$name" train.resume=$resume \
    ${DEMO_TRAIN:-}
fi
python -m sim4seg.eval ckpt="runs/$name" data.root="$data" split=test mode=generate out="results/$name" \
  max_new_tokens=64 overlays_per_subset=2
python -m sim4seg.baselines --data "$data" --split test --results "results/$name"
echo "demo finished in $(( $(date +%s) - start )) s; tables: results/$name/metrics.md, overlays: results/$name/overlays/"
echo "open the app on this model: sim4seg app --ckpt runs/$name   (then http://127.0.0.1:7860)"
