"""Muon (Jordan et al. 2024) as ``torch.optim.Muon`` computes it, for every tensor of a model.

``torch.optim.Muon`` takes only 2-D parameters, and Muon's users step the rest with AdamW. The
``muon`` rule does what they do:

- a matrix (2-D) gets torch.optim.Muon's step: momentum ``buf.lerp_(g, 1 - momentum)``, Nesterov
  ``g.lerp(buf, momentum)``, Newton-Schulz orthogonalisation (torch's own function, in bfloat16),
  scaled by ``lr`` times torch's ``adjust_lr_fn`` ratio for the matrix's shape;
- a convolution kernel (more than 2 dimensions) is viewed as the matrix
  ``(out_channels, in_channels * kernel elements)``, as in Keller Jordan's reference Muon, and
  stepped as that matrix (torch's shape ratio is that of the flattened matrix);
- a tensor with fewer than 2 dimensions (biases, normalisation gains), and every tensor of a param
  group with ``use_muon=False`` (Muon's authors keep embeddings and the classifier head on AdamW:
  put them in such a group, with its own ``lr``), gets torch.optim.AdamW's step with the group's
  ``lr``, ``adamw_betas`` and ``adamw_eps``;
- weight decay is decoupled for all of them, ``w <- w * (1 - lr * weight_decay)``, as in both
  torch optimizers (applied by ``Graft``, outside the grafting norms).

So ``Graft(params, "muon")`` steps like ``torch.optim.Muon`` on the matrices (and on the kernels
viewed as matrices) plus ``torch.optim.AdamW`` on the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from graftbench.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

from graftbench.optim.rules import Adam, Rule, Update, _scratch


def _torch_muon() -> tuple[Any, Any]:
    """torch's own Newton-Schulz iteration and lr adjustment (torch >= 2.9), or (None, None)."""
    try:
        from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz
    except ImportError:  # pragma: no cover - only with an older torch
        return None, None
    return _adjust_lr, _zeropower_via_newtonschulz


__all__ = ["Muon"]

_ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "spectral_unclamped")


class Muon(Rule):
    """torch.optim.Muon on matrices and (flattened) kernels, torch.optim.AdamW elsewhere (see the
    module docstring for which tensor gets which)."""

    name = "muon"
    defaults: ClassVar[dict[str, Any]] = dict(
        lr=1e-3,
        weight_decay=0.1,
        momentum=0.95,
        nesterov=True,
        ns_coefficients=(3.4445, -4.775, 2.0315),
        eps=1e-7,
        ns_steps=5,
        adjust_lr_fn=None,
        use_muon=True,
        adamw_betas=(0.9, 0.999),
        adamw_eps=1e-8,
    )

    def __init__(self, **hyperparams: Any) -> None:
        super().__init__(**hyperparams)

    def check(self, hp: dict[str, Any]) -> None:
        if hp["adjust_lr_fn"] not in _ADJUST_LR_FNS:
            choices = ", ".join(str(f) for f in _ADJUST_LR_FNS)
            raise ValueError(
                f"muon: invalid adjust_lr_fn {hp['adjust_lr_fn']!r}; choose: {choices}"
            )
        if not 0 < hp["ns_steps"] < 100:
            raise ValueError(f"muon: invalid ns_steps {hp['ns_steps']}: must be in 1..99")
        if not all(0.0 <= b < 1.0 for b in hp["adamw_betas"]):
            raise ValueError(f"muon: invalid adamw_betas {hp['adamw_betas']}: need [0, 1)")

    def decoupled_decay(self, hp: Mapping[str, Any]) -> float:
        return float(hp["weight_decay"])

    def coupled_decay(self, hp: Mapping[str, Any]) -> float:
        return 0.0

    def uses_workspace(self, hp: Mapping[str, Any]) -> bool:
        return True  # AdamW's share computes in it

    @staticmethod
    def _orthogonalised(param: Tensor, hp: Mapping[str, Any]) -> bool:
        return hp["use_muon"] and param.dim() >= 2

    def init(self, param: Tensor, hp: Mapping[str, Any]) -> dict[str, Any]:
        if self._orthogonalised(param, hp):
            return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}
        return Adam.init(self, param, {"amsgrad": False})

    def update(self, params, grads, states, hp, step, workspace=None, fused=False):
        # The step is -lr times: the orthogonalised matrix as torch.optim.Muon adds it (bfloat16,
        # times its shape's adjust_lr_fn ratio where that is not 1), and AdamW's step / lr.
        lr = hp["lr"]
        steps: list[Tensor | None] = [None] * len(params)
        matrices = [i for i, p in enumerate(params) if self._orthogonalised(p, hp)]
        if matrices:
            adjust_lr, newton_schulz = _torch_muon()
            if newton_schulz is None:  # pragma: no cover
                raise ValueError("muon needs torch >= 2.9 (torch.optim.Muon)")
            for i, update in zip(matrices, self._muon(matrices, grads, states, hp), strict=True):
                rows = params[i].shape[0]
                cols = params[i].numel() // rows
                ortho = newton_schulz(
                    update.reshape(rows, cols), hp["ns_coefficients"], hp["ns_steps"], hp["eps"]
                )
                ratio = adjust_lr(1.0, hp["adjust_lr_fn"], (rows, cols))
                steps[i] = (ortho if ratio == 1.0 else ortho.mul(ratio)).reshape(params[i].shape)
        rest = [i for i in range(len(params)) if steps[i] is None]
        if rest:
            adamw = {"betas": hp["adamw_betas"], "eps": hp["adamw_eps"], "lr": lr}
            adamw.update(weight_decay=0.0, amsgrad=False, decoupled_weight_decay=True)
            scratch = _scratch(params, workspace)
            update = Adam.update(
                self,
                [params[i] for i in rest],
                [grads[i] for i in rest],
                [states[i] for i in rest],
                adamw,
                step,
                [scratch[i] for i in rest],
                fused,
            ).materialised()
            torch._foreach_mul_(update.tensors, update.scale / -lr if lr else 0.0)
            for i, tensor in zip(rest, update.tensors, strict=True):
                steps[i] = tensor
        return Update(steps, -lr)

    @staticmethod
    def _muon(matrices: list[int], grads, states, hp) -> list[Tensor]:
        """Momentum, and Nesterov's look-ahead where set: what Newton-Schulz orthogonalises."""
        grads = [grads[i] for i in matrices]
        bufs = [states[i]["momentum_buffer"] for i in matrices]
        torch._foreach_lerp_(bufs, grads, 1 - hp["momentum"])
        return torch._foreach_lerp(grads, bufs, hp["momentum"]) if hp["nesterov"] else bufs
