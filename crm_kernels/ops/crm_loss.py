"""crm_loss: the CRM training objective (SPEC 3) over a packed batch.

Per trajectory i, with log S(T) its total log survival: w_S * L_S if outcome[i] (L_S = -log S(T));
otherwise w_W * L_W (L_W = -log(1 - S(T)), log S(T) clamped below 0, SPEC 4) plus w_z * L_z when
its first wrong step z = first_error[i] >= 0 is known (L_z = -log p(z)). The per-trajectory losses
are reduced as `_numerics.reduce_losses` says, inside the op.

The forward op returns log S(T) beside the losses: the backward needs only it and the per-step
hazards, so it never rescans the trajectory's prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._backends import kernels, resolve
from .._numerics import accumulate_dtype, empty_loss, reduction_divisor
from .._validate import (
    check_cu_steps,
    check_first_error,
    check_logits,
    check_outcome,
    check_reduction,
    check_values,
    check_weights,
)
from ._library import define

# ---- the private ops: one schema for every backend ------------------------------------------
# Their autograd (saving log S(T), calling _crm_loss_backward with the upstream gradient of each
# trajectory) is C++: csrc/autograd.cpp.


def _forward(
    logits: Tensor, cu_steps: Tensor, outcome: Tensor, first_error: Tensor | None, w_survive: float,
    w_wrong: float, w_first_error: float, normalizer: float | None, backend: str, validate: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The loss, and log S(T) [B] for the backward. normalizer=None: the [B] losses l_i;
    otherwise their ordered sum (SPEC 4) over `normalizer`, which the backend reduces: torch ops
    reducing after the call, each with its autograd, cost more than the kernels of a small batch."""
    if validate:
        check_values(logits, cu_steps, outcome, first_error)
    return kernels(backend).crm_loss_forward(
        logits, cu_steps, outcome, first_error, w_survive, w_wrong, w_first_error, normalizer
    )


def _forward_fake(logits, cu_steps, outcome, first_error, w_survive, w_wrong, w_first_error, normalizer, backend,
                  validate):  # fmt: skip
    batch = cu_steps.shape[0] - 1
    log_survival_total = logits.new_empty((batch,), dtype=accumulate_dtype(logits.dtype))
    return empty_loss(log_survival_total, normalizer), log_survival_total


_crm_loss = define(
    "_crm_loss(Tensor logits, Tensor cu_steps, Tensor outcome, Tensor? first_error, float w_survive, "
    "float w_wrong, float w_first_error, float? normalizer, str backend, bool validate) -> (Tensor, Tensor)",
    _forward, _forward_fake, differentiable=True,
)  # fmt: skip


def _backward(
    grad_losses: Tensor, logits: Tensor, cu_steps: Tensor, outcome: Tensor, first_error: Tensor | None,
    log_survival_total: Tensor, w_survive: float, w_wrong: float, w_first_error: float, backend: str,
) -> Tensor:  # fmt: skip
    """The logits' gradient for the upstream gradient of each trajectory's loss, grad_losses [B]."""
    return kernels(backend).crm_loss_backward(
        grad_losses, logits, cu_steps, outcome, first_error, log_survival_total, w_survive, w_wrong, w_first_error
    )


def _backward_fake(grad_losses, logits, cu_steps, outcome, first_error, log_survival_total, w_survive, w_wrong,
                   w_first_error, backend):  # fmt: skip
    return torch.empty_like(logits)


define(
    "_crm_loss_backward(Tensor grad_losses, Tensor logits, Tensor cu_steps, Tensor outcome, Tensor? first_error, "
    "Tensor log_survival_total, float w_survive, float w_wrong, float w_first_error, str backend) -> Tensor",
    _backward, _backward_fake,
)  # fmt: skip


# ---- the public function and module ----------------------------------------------------------


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
    # The op reduces by a float divisor (None: "none"); a tensor normalizer divides its sum here.
    divisor = reduction_divisor(reduction, normalizer, batch)
    loss, _ = _crm_loss(logits, cu_steps, outcome, first_error, *weights, divisor, backend, validate)
    return loss / normalizer if isinstance(normalizer, Tensor) else loss


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
