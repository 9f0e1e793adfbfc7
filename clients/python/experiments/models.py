# SPDX-License-Identifier: MIT
"""The papers' models.

autoencoder(): Hinton & Salakhutdinov's deep autoencoder as Martens'
thesis trains it (§4.12, Table 4.2: MNIST 784-1000-500-250-30, mirrored
decoder): logistic hidden units, a linear 30-unit code layer, logistic
outputs folded into the sigmoid cross-entropy loss; sparse
initialization (Martens 2010, thesis §4.13).

small_cnn(): the BMA paper's small model (Table 1): four 3x3 convolutions
with 3 channels, stride 1, zero padding 1, each followed by tanh and 2x2
max pooling, then a 10-way fully connected layer (softmax in the loss):
322 parameters on 28 x 28 inputs (its Table 3).
"""

from typing import Sequence

import torch
from torch import nn

AUTOENCODER_DIMS = (784, 1000, 500, 250, 30)


def sparse_init_(layer: nn.Linear, nonzero: int, gen: torch.Generator) -> None:
    """Each unit gets @nonzero incoming weights from N(0, 1), the others
    and the bias 0 (Martens 2010's sparse initialization)."""
    with torch.no_grad():
        n_out, n_in = layer.weight.shape
        layer.weight.zero_()
        k = min(nonzero, n_in)
        for j in range(n_out):
            cols = torch.randperm(n_in, generator=gen)[:k]
            layer.weight[j, cols] = torch.randn(k, generator=gen)
        layer.bias.zero_()


def autoencoder(dims: Sequence[int] = AUTOENCODER_DIMS, seed: int = 0,
                nonzero: int = 15) -> nn.Sequential:
    """The symmetric autoencoder on flattened inputs; its output is the
    pre-activation of the (logistic) output layer."""
    sizes = list(dims) + list(dims[-2::-1])
    code = len(dims) - 2  # index of the layer into the code units (linear)
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        sparse_init_(lin, nonzero, gen)
        layers.append(lin)
        if i != code and i != len(sizes) - 2:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def small_cnn(side: int = 28, channels: int = 3, classes: int = 10, seed: int = 0) -> nn.Sequential:
    """The BMA paper's Table 1 model on [m, 1, side, side] inputs (torch's
    default initialization; the paper gives none)."""
    torch.manual_seed(seed)
    layers, c_in = [], 1
    for _ in range(4):
        layers += [nn.Conv2d(c_in, channels, 3, stride=1, padding=1), nn.Tanh(), nn.MaxPool2d(2)]
        c_in = channels
        side //= 2
    layers += [nn.Flatten(), nn.Linear(channels * side * side, classes)]
    return nn.Sequential(*layers)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
