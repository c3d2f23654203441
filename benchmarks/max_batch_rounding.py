"""How far apart are perturbations synthesised at different --max-batch values?

Each row draws its N noise copies at once from its own generator, whatever the chunking; chunking
changes only the order of floating-point sums. Prints the largest absolute difference of the final
perturbation against max_batch=256 (one thread, fmnist-badnets from the zoo, a fixed random
image, ε=1, σ=0.25, N=8, 50 steps). Usage: OMP_NUM_THREADS=1 python benchmarks/max_batch_rounding.py
"""

import torch

from smoothinv.methods import get_method
from smoothinv.zoo import load_zoo_model

torch.set_num_threads(1)
model = load_zoo_model("fmnist-badnets").module
torch.manual_seed(0)
image = torch.rand(1, 28, 28)
perturbations = {}
for max_batch in (1, 3, 256):
    method = get_method("smoothinv", eps=1.0, sigma=0.25, noise_samples=8, steps=50, max_batch=max_batch)
    perturbations[max_batch] = method.invert(model, image, target=3, seed=0).perturbation
for max_batch in (1, 3):
    gap = float((perturbations[max_batch] - perturbations[256]).abs().max())
    print(f"max_batch {max_batch} vs 256: largest |difference| {gap:.3g}")
