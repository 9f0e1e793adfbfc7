# SPDX-License-Identifier: MIT
"""PyTorch integration of curvd: CurvdOptimizer, and the pieces it is made
of (layout mapping, losses, layer capture, the curvature oracle), and
Preconditioner, which preconditions p.grad for the user's own optimizer."""

from .layout import Block, model_blocks
from .losses import (LOSSES, GaussNewtonLoss, Loss, SigmoidCrossEntropy, SoftmaxCrossEntropy,
                     SquaredError, get_loss)
from .optim import CurvdOptimizer
from .takeover import SessionTakenOver
from .oracle import TorchOracle
from .precond import Preconditioner

__all__ = [
    "Block", "CurvdOptimizer", "GaussNewtonLoss", "LOSSES", "Loss", "Preconditioner",
    "SessionTakenOver", "SigmoidCrossEntropy", "SoftmaxCrossEntropy", "SquaredError",
    "TorchOracle", "get_loss", "model_blocks",
]
