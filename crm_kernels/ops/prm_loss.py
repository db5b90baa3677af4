"""prm_loss: the PRM (Math-Shepherd) objective in the packed layout (SPEC 7).

logits[t] is the head's logit that step t is correct, step_labels[t] its target y_t in [0, 1] (a
hard label or a soft Monte-Carlo estimate). Per step, binary cross-entropy with logits:

    l_t = softplus(x_t) - y_t x_t,    dl_t/dx_t = sigmoid(x_t) - y_t

"mean" divides the sum over all N steps of the batch by N (or by `normalizer`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._backends import kernels, resolve
from .._numerics import accumulate_dtype, reduction_divisor
from .._validate import check_cu_steps, check_logits, check_objective_values, check_reduction, check_step_labels
from ._library import define

# ---- the private ops: one schema for every backend ------------------------------------------
# Their autograd (saving the inputs, calling _prm_loss_backward with each step's upstream
# gradient) is C++: csrc/autograd.cpp.


def _forward(logits: Tensor, cu_steps: Tensor, step_labels: Tensor, normalizer: float | None, backend: str,
             validate: bool) -> Tensor:  # fmt: skip
    """normalizer=None: the [N] per-step losses; otherwise their ordered sum over `normalizer`."""
    if validate:
        check_objective_values(logits, cu_steps, step_labels=step_labels)
    return kernels(backend).prm_loss_forward(logits, step_labels, normalizer)


def _forward_fake(logits, cu_steps, step_labels, normalizer, backend, validate):
    return logits.new_empty(() if normalizer is not None else logits.shape, dtype=accumulate_dtype(logits.dtype))


_prm_loss = define(
    "_prm_loss(Tensor logits, Tensor cu_steps, Tensor step_labels, float? normalizer, str backend, bool validate) "
    "-> Tensor",
    _forward, _forward_fake, differentiable=True,
)  # fmt: skip


def _backward(grad_losses: Tensor, logits: Tensor, step_labels: Tensor, backend: str) -> Tensor:
    """The logits' gradient for the upstream gradient of each step's loss, grad_losses [N]."""
    return kernels(backend).prm_loss_backward(grad_losses, logits, step_labels)


def _backward_fake(grad_losses, logits, step_labels, backend):
    return torch.empty_like(logits)


define(
    "_prm_loss_backward(Tensor grad_losses, Tensor logits, Tensor step_labels, str backend) -> Tensor",
    _backward, _backward_fake,
)  # fmt: skip


# ---- the public function -----------------------------------------------------------------------


def prm_loss(
    logits: Tensor,
    cu_steps: Tensor,
    step_labels: Tensor,
    *,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool = True,
    backend: str = "auto",
) -> Tensor:
    """The PRM objective (Math-Shepherd): per-step binary cross-entropy with logits (SPEC 7).

    Args:
        logits: [N] the head's logit that each step is correct, packed as in `crm_loss`.
        cu_steps: [B + 1] offsets, as in `log_survival`.
        step_labels: [N] floating targets in [0, 1]: hard labels, or soft Monte-Carlo estimates of
            each step's correctness.
        reduction: "mean" (sum over the N steps / N; 0 for a batch without steps), "sum" or
            "none" (the [N] per-step losses).
        normalizer: divide the summed loss by this (> 0) instead of N, e.g. the global number of
            steps across data-parallel ranks.
        validate, backend: as in `crm_loss`.

    Returns:
        A float32 scalar (float64 for float64 logits), or [N] for reduction="none". Rank steps by
        sigmoid(logits) (`crm_kernels.scoring`, how="min" or "product" over a trajectory).
    """
    check_logits(logits)
    check_cu_steps(cu_steps, logits)
    check_step_labels(step_labels, logits)
    check_reduction(reduction, normalizer, validate)
    backend = resolve(backend, logits.device, "prm_loss")
    divisor = reduction_divisor(reduction, normalizer, logits.numel())
    loss = _prm_loss(logits, cu_steps, step_labels, divisor, backend, validate)
    return loss / normalizer if isinstance(normalizer, Tensor) else loss
