"""Algorithm 2 by copy and revert: the oracle for tests and the baseline for benchmarks.

This is grafting the way the paper authors' PyTorch code does it: save the weights, let M step
them, measure dM, restore, let D step them, measure dD, and set the weights to the saved copy
plus the rescaled dD - with a Python loop over tensors. It is deliberately plain and slow; use
:class:`graftbench.optim.Graft` for real work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

Factory = Callable[[list[Tensor]], torch.optim.Optimizer]


class CopyRevertGraft:
    """``M#D`` from two real ``torch.optim`` optimizers over the same parameters."""

    def __init__(
        self,
        params: Iterable[Tensor],
        magnitude: Factory,
        direction: Factory,
        *,
        granularity: str = "layer",
        eps: float = 1e-16,
    ) -> None:
        self.params = list(params)
        self.magnitude = magnitude(self.params)
        self.direction = direction(self.params)
        self.granularity = granularity
        self.eps = eps

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        saved = [p.detach().clone() for p in params]
        grads = [p.grad.clone() for p in params]  # M may change gradients in place
        self.magnitude.step()
        d_magnitude = [p - s for p, s in zip(params, saved, strict=True)]
        for p, s, g in zip(params, saved, grads, strict=True):
            p.copy_(s)
            p.grad.copy_(g)
        self.direction.step()
        d_direction = [p - s for p, s in zip(params, saved, strict=True)]
        m_norms = [d.norm() for d in d_magnitude]
        d_norms = [d.norm() for d in d_direction]
        if self.granularity == "global":
            m_total = torch.stack(m_norms).norm()
            d_total = torch.stack(d_norms).norm()
            m_norms, d_norms = [m_total] * len(params), [d_total] * len(params)
        for p, s, d, m_norm, d_norm in zip(
            params, saved, d_direction, m_norms, d_norms, strict=True
        ):
            ratio = m_norm / (d_norm + self.eps) if d_norm > 0 else 0.0
            p.copy_(s + ratio * d)
