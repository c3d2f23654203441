#!/usr/bin/env bash
# The VQA benchmark (docs/benchmarks.md, "Dual-key VQA backdoors"): every VQA zoo model through TIJO,
# feature-only and token-only inversion, as two one-thread shards side by side on the 2-core machine,
# merged into benchmarks/results/vqa-tijo.json with the AUC table; the trojan classifiers shipped in
# the store are fitted on the merged results.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
names=$(python3 -c "from smoothinv.vqa.zoo import all_recipes; print(' '.join(r.name for r in all_recipes()))")
shard() {
    local args=() i=0
    for n in $names; do [ $((i % 2)) -eq "$1" ] && args+=(--model "$n"); i=$((i + 1)); done
    smoothinv vqa bench --out "/tmp/vqa-bench-$1.json" "${args[@]}" > "/tmp/vqa-bench-$1.log" 2>&1
}
rm -f /tmp/vqa-bench-0.json /tmp/vqa-bench-1.json
shard 0 & shard 1 & wait
rm -f benchmarks/results/vqa-tijo.json
smoothinv vqa bench --out benchmarks/results/vqa-tijo.json --merge /tmp/vqa-bench-0.json --merge /tmp/vqa-bench-1.json \
    --write-classifier
