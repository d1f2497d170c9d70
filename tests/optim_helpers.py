"""A small model with every kind of tensor a real one has (conv, norm, bias, linear), trained on a
fixed batch, so that optimizer trajectories can be compared step for step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),  # BN follows: a bias would get only noise
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    )


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(32, 3, 8, 8, generator=generator), torch.randint(
        0, 10, (32,), generator=generator
    )


def train(
    model: nn.Module,
    optimizer,
    steps: int,
    before_step: Callable[[], None] | None = None,
    scheduler=None,
) -> list[float]:
    """Run ``steps`` full-batch steps (inputs in the model's dtype, the loss in float32 or
    float64); returns the losses."""
    x, y = batch()
    x = x.to(next(model.parameters()).dtype)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        if before_step is not None:
            before_step()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def assert_same_weights(a: nn.Module, b: nn.Module, **tolerance) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}", **tolerance)


class TorchMuon:
    """What the ``muon`` rule means, with torch's optimizers: torch.optim.Muon on 2-D views of the
    matrices and convolution kernels (``(out, in * k * k)``), torch.optim.AdamW on the rest."""

    def __init__(self, params, lr=1e-3, weight_decay=0.1, adamw_betas=(0.9, 0.999), **muon):
        self.params = list(params)
        self.views = {
            p: torch.nn.Parameter(p.detach().view(p.shape[0], -1))
            for p in self.params
            if p.dim() >= 2
        }
        self.muon = torch.optim.Muon(
            list(self.views.values()), lr=lr, weight_decay=weight_decay, **muon
        )
        rest = [p for p in self.params if p.dim() < 2]
        self.adamw = torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay, betas=adamw_betas)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p, view in self.views.items():
            view.grad = None if p.grad is None else p.grad.view(view.shape)
        self.muon.step()
        self.adamw.step()
