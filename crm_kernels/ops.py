"""The public CRM ops: validate -> pick a backend -> call the torch.library op -> reduce.

The math is SPEC sections 1 and 3; `crm_kernels.reference` is the same thing in eager PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _library, reference
from ._backends import resolve
from ._numerics import reduce_losses
from ._validate import (
    check_cu_steps,
    check_first_error,
    check_logits,
    check_outcome,
    check_reduction,
    check_values,
    check_weights,
)


def log_survival(logits: Tensor, cu_steps: Tensor, *, validate: bool = True, backend: str = "auto") -> Tensor:
    """log S(t) = sum_{k<=t} log(1 - sigmoid(x_k)) within each trajectory, for every step.

    Args:
        logits: [N] hazard logits x_t of all trajectories, packed (float16/bfloat16/float32/float64).
        cu_steps: [B + 1] int32/int64 offsets: trajectory i owns logits[cu_steps[i]:cu_steps[i+1]].
        validate: check the offsets' values (one device sync). False skips it, e.g. for CUDA-graph
            capture; kernels stay in bounds whatever they are given, but results of bad input are
            undefined.
        backend: "auto" (the first of `available_backends(logits.device)`), "torch", "cpu",
            "triton" or "cuda".

    Returns:
        [N] float32 (float64 for float64 logits), differentiable with respect to logits.
    """
    check_logits(logits)
    check_cu_steps(cu_steps, logits)
    backend = resolve(backend, logits.device)
    if backend == "torch":
        if validate:
            check_values(logits, cu_steps)
        return reference.log_survival_padded(logits, cu_steps)
    return _library.log_survival(logits, cu_steps, backend, validate)


def crm_loss(
    logits: Tensor,
    cu_steps: Tensor,
    outcome: Tensor,
    first_error: Tensor | None = None,
    *,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool = True,
    backend: str = "auto",
) -> Tensor:
    """The CRM training objective (SPEC 3) over a packed batch.

    Per trajectory i: w_S * L_S if outcome[i] (L_S = -log S(T)); otherwise w_W * L_W
    (L_W = -log(1 - S(T))) plus w_z * L_z when its first wrong step z = first_error[i] >= 0 is known
    (L_z = -log p(z)).

    Args:
        logits: as in `log_survival`.
        cu_steps: as in `log_survival`.
        outcome: [B] bool or 0/1 integers, 1 for a trajectory that reached the correct answer.
        first_error: optional [B] int32/int64, 0-based first wrong step of flawed trajectories, -1
            where unknown (and on every correct trajectory).
        weights: (w_S, w_W, w_z).
        reduction: "mean" (sum / B; 0 for a batch without trajectories), "sum" or "none" (the [B]
            vector of l_i). Sums have the same bits for any number of threads.
        normalizer: divide the summed loss by this (> 0) instead of B. Data-parallel ranks pass the
            global number of trajectories so that their gradients add up to the single-process
            mean. A tensor's value is checked unless validate=False or under torch.compile.
        validate: as in `log_survival`.
        backend: as in `log_survival`.

    Returns:
        A float32 scalar (float64 for float64 logits), or [B] for reduction="none".
    """
    check_logits(logits)
    batch = check_cu_steps(cu_steps, logits)
    check_outcome(outcome, batch, logits)
    check_first_error(first_error, batch, logits)
    weights = check_weights(weights)
    check_reduction(reduction, normalizer, validate)
    backend = resolve(backend, logits.device)
    if backend == "torch":
        if validate:
            check_values(logits, cu_steps, outcome, first_error)
        return reference.crm_loss_padded(logits, cu_steps, outcome, first_error, weights, reduction, normalizer)
    losses, _ = _library.crm_loss(logits, cu_steps, outcome, first_error, *weights, backend, validate)
    return reduce_losses(losses, reduction, normalizer)


class CRMLoss(torch.nn.Module):
    """`crm_loss` as a module: CRMLoss(weights, reduction)(logits, cu_steps, outcome, first_error)."""

    def __init__(self, weights=(1.0, 1.0, 1.0), reduction: str = "mean", *, validate: bool = True,
                 backend: str = "auto"):  # fmt: skip
        super().__init__()
        self.weights = check_weights(weights)
        check_reduction(reduction, None)
        self.reduction, self.validate, self.backend = reduction, validate, backend

    def forward(self, logits, cu_steps, outcome, first_error=None, normalizer=None):
        return crm_loss(
            logits, cu_steps, outcome, first_error, weights=self.weights, reduction=self.reduction,
            normalizer=normalizer, validate=self.validate, backend=self.backend,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"weights={self.weights}, reduction={self.reduction!r}, backend={self.backend!r}"
