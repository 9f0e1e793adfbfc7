# SPDX-License-Identifier: MIT
"""The losses curvd.torch understands, as the thesis's table has them
(Martens' thesis §3.4, Table 4.1; ALGORITHMS.md §0).

The model's output z is the pre-activation of the last layer: the output
non-linearity is part of the loss, which makes the Gauss-Newton matrix
equal to the Fisher. Each loss gives, per example: its value L(y, z), the
product of its Hessian H_L = d^2 L / dz^2 with a vector, and a sample of
y from the model's predictive distribution R(y|z) (for the true Fisher).
Per-example values sum over output units; the mini-batch loss is their
mean.
"""

import torch
import torch.nn.functional as F


class Loss:
    name = "loss"

    def per_example(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[m] per-example losses."""
        raise NotImplementedError

    def hess_vec(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """H_L u for each example (u shaped like z)."""
        raise NotImplementedError

    def hess_sqrt_vec(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """S u for each example, with S^T S = H_L: Gram matrices formed from
        these are positive semi-definite by construction, where
        u^T (H_L w) can come out as a tiny negative number for a u that H_L
        maps to zero (measured: -5e-30 on the softmax of the small CNN)."""
        raise NotImplementedError

    def sample(self, z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Targets drawn from R(y|z), shaped as the loss takes them."""
        raise NotImplementedError

    def sampled_signal(self, z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Per example, d/dz of the loss of targets drawn from R(y|z): the
        true Fisher's signal at the output (K-FAC's statistics), whose
        second moment is H_L for the losses here."""
        z = z.detach().requires_grad_()
        with torch.enable_grad():
            return torch.autograd.grad(self.per_example(z, self.sample(z.detach(), gen)).sum(),
                                       z)[0]


def _per_example_sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


class SquaredError(Loss):
    """L = 1/2 ||z - y||^2 (a Gaussian with unit variance); H_L = I."""

    name = "mse"

    def per_example(self, z, y):
        return 0.5 * _per_example_sum((z - y) ** 2)

    def hess_vec(self, z, u):
        return u

    def hess_sqrt_vec(self, z, u):
        return u

    def sample(self, z, gen):
        return z + torch.randn(z.shape, generator=gen, dtype=z.dtype, device=z.device)


class SoftmaxCrossEntropy(Loss):
    """L = -log softmax(z)[y] over dimension 1 (classes); y holds class
    indices, or probabilities shaped like z. H_L = diag(p) - p p^T."""

    name = "cross_entropy"

    def per_example(self, z, y):
        return _per_example_sum(F.cross_entropy(z, y, reduction="none").reshape(z.shape[0], -1))

    def hess_vec(self, z, u):
        p = torch.softmax(z, dim=1)
        return p * u - p * (p * u).sum(dim=1, keepdim=True)

    def hess_sqrt_vec(self, z, u):
        """S = diag(sqrt(p)) (I - 1 p^T): S^T S = diag(p) - p p^T."""
        p = torch.softmax(z, dim=1)
        return p.sqrt() * (u - (p * u).sum(dim=1, keepdim=True))

    def sample(self, z, gen):
        p = torch.softmax(z, dim=1).movedim(1, -1)
        flat = p.reshape(-1, p.shape[-1])
        draws = torch.multinomial(flat, 1, generator=gen).reshape(p.shape[:-1])
        return draws


class SigmoidCrossEntropy(Loss):
    """L = sum_j BCE(sigmoid(z_j), y_j), y in [0, 1]; H_L = diag(p (1 - p))."""

    name = "binary_cross_entropy"

    def per_example(self, z, y):
        return _per_example_sum(F.binary_cross_entropy_with_logits(z, y, reduction="none"))

    def hess_vec(self, z, u):
        p = torch.sigmoid(z)
        return p * (1 - p) * u

    def hess_sqrt_vec(self, z, u):
        p = torch.sigmoid(z)
        return (p * (1 - p)).sqrt() * u

    def sample(self, z, gen):
        return torch.bernoulli(torch.sigmoid(z), generator=gen)


class GaussNewtonLoss(Loss):
    """Any per-example loss, given with a factor of its output-layer
    Gauss-Newton matrix: for the K-FAC and HF kinds of CurvdOptimizer and
    the Preconditioner's true Fisher, where the loss is none of the three.

    per_example(z, y) -> [m]: each example's loss (the batch's loss is
      their mean), z the model's output [m, ...].
    hess_factor(z) -> S [m, k, n] with S^T S = H_L per example (n the
      output's size per example, z flattened): the Hessian of the loss in
      z, or the positive semi-definite part the Gauss-Newton model should
      keep. HF's products and quadratic forms use S^T S, K-FAC's true-
      Fisher signals S^T eps with eps ~ N(0, I_k) (second moment S^T S),
      unless sample(z, gen) is given: then the signals are those of the
      loss of targets it draws, as for the built-in losses.
    """

    def __init__(self, per_example, hess_factor, sample=None, name="custom"):
        self._per_example, self._factor, self._sample = per_example, hess_factor, sample
        self.name = name

    def per_example(self, z, y):
        return self._per_example(z, y)

    def factor(self, z: torch.Tensor) -> torch.Tensor:
        m = z.shape[0]
        s = self._factor(z)
        n = z[0].numel()
        if not torch.is_tensor(s) or s.dim() != 3 or s.shape[0] != m or s.shape[2] != n:
            got = list(s.shape) if torch.is_tensor(s) else type(s).__name__
            raise ValueError(f"{self.name}: hess_factor(z) must return S as [m, k, n] = "
                             f"[{m}, k, {n}] for an output z of {list(z.shape)} (S^T S the "
                             f"loss's Hessian in z per example), got {got}")
        return s

    def hess_sqrt_vec(self, z, u):
        return torch.einsum("mkn,mn->mk", self.factor(z), u.reshape(z.shape[0], -1))

    def hess_vec(self, z, u):
        s = self.factor(z)
        su = torch.einsum("mkn,mn->mk", s, u.reshape(z.shape[0], -1))
        return torch.einsum("mkn,mk->mn", s, su).reshape(z.shape)

    def sample(self, z, gen):
        if self._sample is None:
            raise ValueError(f"{self.name}: no sample() was given; the true Fisher's signals "
                             "come from hess_factor")
        return self._sample(z, gen)

    def sampled_signal(self, z, gen):
        if self._sample is not None:
            return super().sampled_signal(z, gen)
        s = self.factor(z.detach())
        eps = torch.randn(s.shape[:2], generator=gen, dtype=s.dtype, device=s.device)
        return torch.einsum("mkn,mk->mn", s, eps).reshape(z.shape)


LOSSES = {
    "mse": SquaredError,
    "squared_error": SquaredError,
    "cross_entropy": SoftmaxCrossEntropy,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "binary_cross_entropy": SigmoidCrossEntropy,
    "sigmoid_cross_entropy": SigmoidCrossEntropy,
}


def get_loss(loss) -> Loss:
    """A Loss from its name (see LOSSES) or a Loss instance."""
    if isinstance(loss, Loss):
        return loss
    try:
        return LOSSES[loss]()
    except (KeyError, TypeError):
        raise ValueError(f"loss must be one of {', '.join(sorted(LOSSES))} or a Loss, "
                         f"got {loss!r}") from None
