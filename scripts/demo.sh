#!/usr/bin/env bash
# The main job on an embedded default: synthetic M3DS -> train the demo preset (tiny LLaVA + real LiteMedSAM)
# through sim4seg.train -> evaluate with sim4seg.eval -> results table, overlays, and the learned-vs-baseline check.
# Reruns skip what is done. Outputs: runs/demo (checkpoints, metrics.jsonl), results/demo (metrics.json/.md, overlays).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
start=$(date +%s)
[ -f data/synthetic/records.jsonl ] || sim4seg data synth --out data/synthetic --n 80 --seed 0
if [ ! -f runs/demo/trainable.safetensors ]; then
  resume=false; [ -f runs/demo/checkpoints/latest ] && resume=true
  python -m sim4seg.train experiment=demo train.resume=$resume
fi
python -m sim4seg.eval ckpt=runs/demo data.root=data/synthetic split=test mode=generate out=results/demo \
  max_new_tokens=64 overlays_per_subset=2
python -m sim4seg.baselines --data data/synthetic --split test --results results/demo
echo "demo finished in $(( $(date +%s) - start )) s; tables: results/demo/metrics.md, overlays: results/demo/overlays/"
echo "open the app on this model: sim4seg app --ckpt runs/demo   (then http://127.0.0.1:7860)"
