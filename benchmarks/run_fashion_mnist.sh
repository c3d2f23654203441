#!/usr/bin/env bash
# Reproduces docs/benchmarks.md's Fashion-MNIST numbers and docs/zoo.md (CPU: ~1 h on 2 cores).
# Needs the data in ../shared/data (or SMOOTHINV_DATA) and a built zoo (smoothinv zoo build).
set -euo pipefail
cd "$(dirname "$0")/.."
models=(fmnist-badnets fmnist-blind-p fmnist-blind-s fmnist-htba fmnist-clean-s0 fmnist-clean-s1 fmnist-clean-s2)
args=(); for m in "${models[@]}"; do args+=(--model "$m"); done
mkdir -p benchmarks/results
smoothinv bench detect "${args[@]}" --out benchmarks/results/detect-fmnist-smoothinv.json
smoothinv bench detect --method nc "${args[@]}" --out benchmarks/results/detect-fmnist-nc.json
smoothinv bench table2 --model fmnist-badnets --model fmnist-htba --images 10 --out benchmarks/results/table2-fmnist-a.csv
smoothinv bench table2 --model fmnist-blind-p --model fmnist-blind-s --images 10 --out benchmarks/results/table2-fmnist-b.csv
smoothinv zoo report --out docs/zoo.md
