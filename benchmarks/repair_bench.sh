#!/usr/bin/env bash
# The mitigation table of docs/repair.md. Every backdoored zoo model, every repair method, 1,000 clean
# training images, the first 2,000 test images; two one-thread shards side by side (the machine has two
# cores; see the developers' guide). Then unlearn and fine-tune with 250 and 5,000 training images on
# three models. Resumable: rerun to continue an interrupted run (same settings, same output file).
set -euo pipefail
export OMP_NUM_THREADS=1
A=(cifar10-badnets cifar10-blend cifar10-blind-g cifar10-blind-p cifar10-blind-p-star cifar10-blind-s cifar10-clip
   cifar10-htba cifar10-trojai fmnist-badnets fmnist-blind-p fmnist-blind-s fmnist-htba)
B=(cifar10-pcnn-patch3-red cifar10-pcnn-patch4-br cifar10-pcnn-patch5-tl cifar10-preact-blend cifar10-preact-patch4-br
   cifar10-preact-patch6-yellow cifar10-vgg-checker4-bl cifar10-vgg-htba cifar10-vgg-patch3-green glyphs100-badnets)
smoothinv bench repair "${A[@]/#/--model=}" --eval-images 2000 --out benchmarks/results/repair-1000-a.json &
smoothinv bench repair "${B[@]/#/--model=}" --eval-images 2000 --out benchmarks/results/repair-1000-b.json
wait
for n in 250 5000; do
  smoothinv bench repair --train-images "$n" --method unlearn --method fine-tune --rescan none --eval-images 2000 \
    --model cifar10-badnets --model cifar10-blend --model fmnist-badnets --out "benchmarks/results/repair-$n.json"
done
