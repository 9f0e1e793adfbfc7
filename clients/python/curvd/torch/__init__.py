# SPDX-License-Identifier: MIT
"""PyTorch integration of curvd: CurvdOptimizer, and the pieces it is made
of (layout mapping, losses, layer capture, the curvature oracle)."""

from .layout import Block, model_blocks
from .losses import LOSSES, Loss, SigmoidCrossEntropy, SoftmaxCrossEntropy, SquaredError, get_loss
from .optim import CurvdOptimizer
from .takeover import SessionTakenOver
from .oracle import TorchOracle

__all__ = [
    "Block", "CurvdOptimizer", "LOSSES", "Loss", "SigmoidCrossEntropy",
    "SessionTakenOver", "SoftmaxCrossEntropy", "SquaredError", "TorchOracle", "get_loss",
    "model_blocks",
]
