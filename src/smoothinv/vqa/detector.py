"""The frozen "detector": TrojVQA's VQA models never see pixels, only the region features of an
offline object detector (Faster R-CNN box features). Here a small CNN trained once on single
Fashion-MNIST items plays that part: each scene cell is one box, its penultimate activations the
box's feature vector. The VQA models and TIJO work in this feature space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .scenes import BOXES, CELL, crops

HEAD_FEATURES = 64
POOLED = 2
FEATURES = HEAD_FEATURES + 32 * POOLED * POOLED
"""Length of a box feature vector: the classifier's 64 penultimate activations and the second conv
layer's 32 channels max-pooled over a 2×2 grid (128), as a detector's RoI-pooled features keep
low-level evidence (a patch) that a class label alone would not."""


class ObjectDetector(nn.Module):
    """28×28 object image [B, 1, 28, 28] → box feature [B, 192] (ReLU activations) and, for
    training it, logits over the ten object classes plus 'empty' [B, 11]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, HEAD_FEATURES)
        self.head = nn.Linear(HEAD_FEATURES, 11)

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.max_pool2d(F.relu(self.conv1(x)), 2)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        maps = self._maps(x)
        top = F.relu(self.fc(F.max_pool2d(maps, 2).flatten(1)))
        return torch.cat([top, F.adaptive_max_pool2d(maps, POOLED).flatten(1)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self._maps(x)
        return self.head(F.relu(self.fc(F.max_pool2d(maps, 2).flatten(1))))


@dataclass
class BoxFeatures:
    """What a VQA model sees of a batch of scenes: `features` [B, 4, 64] and `boxes` [B, 4, 4]."""

    features: torch.Tensor
    boxes: torch.Tensor


@torch.no_grad()
def box_features(detector: ObjectDetector, images: torch.Tensor, batch: int = 1024) -> BoxFeatures:
    """The detector's box features of scenes [B, 1, 56, 56]."""
    detector.eval()
    cells = crops(images).reshape(-1, 1, CELL, CELL)
    feats = torch.cat([detector.features(cells[i:i + batch]) for i in range(0, len(cells), batch)])
    feats = feats.reshape(len(images), 4, FEATURES)
    return BoxFeatures(feats, BOXES.expand(len(images), 4, 4).clone())


def train_detector(objects: torch.Tensor, labels: torch.Tensor, *, epochs: int = 2, seed: int = 0,
                   log: Callable[[str], None] = lambda _: None) -> ObjectDetector:
    """A detector trained on `objects` uint8 [M, 28, 28] (labels [M]) plus blank cells as class 10."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    blanks = len(objects) // 10
    x = torch.cat([objects.float().div(255), torch.zeros(blanks, CELL, CELL)])[:, None]
    y = torch.cat([labels, torch.full((blanks,), 10, dtype=labels.dtype)])
    model = ObjectDetector()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        correct = 0
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y[idx]).sum())
        log(f"detector epoch {epoch + 1}/{epochs}: train accuracy {correct / len(x):.3f}")
    return model.eval()
