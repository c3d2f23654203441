#!/usr/bin/env bash
# Reproduces docs/benchmarks.md's "Detection across kinds of model" (issue 12): builds the diverse
# CIFAR-10 zoo (plain_cnn, vgg_cifar_bn, preact_resnet18_w16; ~2 h of one core) if it is not built,
# scans each model with SmoothInv, Neural Cleanse and MM-BD (one model per process, two processes
# of one thread each: ~4 h of one core), merges the per-model reports and prints the rule table.
# Needs the data in ../shared/data (or SMOOTHINV_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
kinds=(pcnn vgg preact)
models=()
for k in "${kinds[@]}"; do
  for m in $(python3 -c "from smoothinv.zoo.recipes import all_recipes; print(' '.join(r.name for r in all_recipes() if r.name.startswith('cifar10-$k-')))"); do
    models+=("$m")
  done
done
for m in "${models[@]}"; do smoothinv zoo build --recipe "$m"; done
mkdir -p benchmarks/results/diverse
for method in smoothinv nc mmbd; do
  printf '%s\n' "${models[@]}" | xargs -P 2 -I{} sh -c \
    "test -s benchmarks/results/diverse/$method-{}.json || smoothinv bench detect --method $method --model {} --out benchmarks/results/diverse/$method-{}.json > /dev/null"
  smoothinv bench merge benchmarks/results/diverse/$method-*.json --out benchmarks/results/detect-diverse-$method.json
done
python3 benchmarks/detection_rules.py benchmarks/results/detect-cifar10-smoothinv.json \
    benchmarks/results/detect-fmnist-smoothinv.json benchmarks/results/detect-diverse-smoothinv.json
