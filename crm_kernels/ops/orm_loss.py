"""orm_loss: the ORM objective in the packed layout (SPEC 7).

logits[t] is the head's logit that the answer is correct; an outcome reward model reads it at each
trajectory's last step. Per trajectory i with last step x_i and outcome o_i in {0, 1}:

    l_i = softplus(x_i) - o_i x_i,    dl_i/dx_i = sigmoid(x_i) - o_i, 0 at every other step

"mean" divides by B. An empty trajectory has no last step: it is rejected.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._backends import kernels, resolve
from .._numerics import accumulate_dtype, reduction_divisor
from .._validate import check_cu_steps, check_logits, check_objective_values, check_outcome, check_reduction
from ._library import define

# ---- the private ops: one schema for every backend ------------------------------------------
# Their autograd is C++: csrc/autograd.cpp.


def _forward(logits: Tensor, cu_steps: Tensor, outcome: Tensor, normalizer: float | None, backend: str,
             validate: bool) -> Tensor:  # fmt: skip
    """normalizer=None: the [B] losses; otherwise their ordered sum over `normalizer`."""
    if validate:
        check_objective_values(logits, cu_steps, outcome=outcome)
    return kernels(backend).orm_loss_forward(logits, cu_steps, outcome, normalizer)


def _forward_fake(logits, cu_steps, outcome, normalizer, backend, validate):
    shape = () if normalizer is not None else (cu_steps.shape[0] - 1,)
    return logits.new_empty(shape, dtype=accumulate_dtype(logits.dtype))


_orm_loss = define(
    "_orm_loss(Tensor logits, Tensor cu_steps, Tensor outcome, float? normalizer, str backend, bool validate) "
    "-> Tensor",
    _forward, _forward_fake, differentiable=True,
)  # fmt: skip


def _backward(grad_losses: Tensor, logits: Tensor, cu_steps: Tensor, outcome: Tensor, backend: str) -> Tensor:
    """The logits' gradient for the upstream gradient of each trajectory's loss, grad_losses [B]."""
    return kernels(backend).orm_loss_backward(grad_losses, logits, cu_steps, outcome)


def _backward_fake(grad_losses, logits, cu_steps, outcome, backend):
    return torch.empty_like(logits)


define(
    "_orm_loss_backward(Tensor grad_losses, Tensor logits, Tensor cu_steps, Tensor outcome, str backend) -> Tensor",
    _backward, _backward_fake,
)  # fmt: skip


# ---- the public function -----------------------------------------------------------------------


def orm_loss(
    logits: Tensor,
    cu_steps: Tensor,
    outcome: Tensor,
    *,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool = True,
    backend: str = "auto",
) -> Tensor:
    """The ORM objective: binary cross-entropy with logits of each trajectory's last step against
    its outcome (SPEC 7).

    Args:
        logits: [N] packed as in `crm_loss`; only each trajectory's last step enters the loss.
        cu_steps: [B + 1] offsets, as in `log_survival`. Every trajectory needs at least one step.
        outcome: [B] bool or 0/1 integers, 1 for a trajectory that reached the correct answer.
        reduction: "mean" (sum / B; 0 for a batch without trajectories), "sum" or "none" ([B]).
        normalizer, validate, backend: as in `crm_loss`.

    Returns:
        A float32 scalar (float64 for float64 logits), or [B] for reduction="none". Rank
        trajectories by their last step's logit (`crm_kernels.scoring`, how="last").
    """
    check_logits(logits)
    batch = check_cu_steps(cu_steps, logits)
    check_outcome(outcome, batch, logits)
    check_reduction(reduction, normalizer, validate)
    backend = resolve(backend, logits.device, "orm_loss")
    divisor = reduction_divisor(reduction, normalizer, batch)
    loss = _orm_loss(logits, cu_steps, outcome, divisor, backend, validate)
    return loss / normalizer if isinstance(normalizer, Tensor) else loss
