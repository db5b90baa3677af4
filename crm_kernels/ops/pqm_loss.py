"""pqm_loss: PQM's comparative (Q-value ranking) objective in the packed layout (SPEC 7).

Li and Li, "Process Reward Model with Q-Value Rankings" (ICLR 2025); the official code is
`ranking_loss` in WindyLee0822/Process_Q_Model, train_main.py (default zeta = 4). logits[t] is step
t's Q-value. For a trajectory with first wrong step z (z = n when every step is correct), correct
steps C = [0, z), wrong steps W = [z, n) and margin m:

    D_0 = 1 + sum_{w in W} e^{x_w + m}                 (the 1 is e^{Q_0} of the initial state)
    D_k = D_0 + sum_{j <= k} e^{x_j},  k in C
    l   = [sum_{k in C} (log D_k - x_k) + [W non-empty] log D_0] / (|C| + [W non-empty])

as the official code normalizes it, by its number of terms. Every log D is a log-sum-exp (the
official code exponentiates directly, and gives NaN at logits of 100 in float32); its 1e-5 inside
each D is dropped (it moves each term by at most 1e-5, since D >= 1). An empty trajectory has no
terms: loss 0, gradient 0. With L_k = log D_k and L_{-1} = log D_0, the kernels walk
L_k = x_k + softplus(L_{k-1} - x_k), so that each term log D_k - x_k is softplus(L_{k-1} - x_k)
rather than a difference of large numbers. Gradient, with count the divisor:

    j in C:  (sum_{j < k < z} e^{x_j - L_k} - sigmoid(L_{j-1} - x_j)) / count
    w in W:  e^{x_w + m} (sum_{k in C} e^{-L_k} + e^{-L_{-1}}) / count

"mean" divides by B.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._backends import kernels, resolve
from .._numerics import accumulate_dtype, reduction_divisor
from .._validate import check_cu_steps, check_first_error, check_logits, check_objective_values, check_reduction
from ._library import define

# ---- the private ops: one schema for every backend ------------------------------------------
# Their autograd is C++: csrc/autograd.cpp.


def _forward(logits: Tensor, cu_steps: Tensor, first_error: Tensor, margin: float, normalizer: float | None,
             backend: str, validate: bool) -> Tensor:  # fmt: skip
    """normalizer=None: the [B] losses; otherwise their ordered sum over `normalizer`."""
    if validate:
        check_objective_values(logits, cu_steps, first_error=first_error)
    return kernels(backend).pqm_loss_forward(logits, cu_steps, first_error, margin, normalizer)


def _forward_fake(logits, cu_steps, first_error, margin, normalizer, backend, validate):
    shape = () if normalizer is not None else (cu_steps.shape[0] - 1,)
    return logits.new_empty(shape, dtype=accumulate_dtype(logits.dtype))


_pqm_loss = define(
    "_pqm_loss(Tensor logits, Tensor cu_steps, Tensor first_error, float margin, float? normalizer, str backend, "
    "bool validate) -> Tensor",
    _forward, _forward_fake, differentiable=True,
)  # fmt: skip


def _backward(grad_losses: Tensor, logits: Tensor, cu_steps: Tensor, first_error: Tensor, margin: float,
              backend: str) -> Tensor:  # fmt: skip
    """The logits' gradient for the upstream gradient of each trajectory's loss, grad_losses [B]."""
    return kernels(backend).pqm_loss_backward(grad_losses, logits, cu_steps, first_error, margin)


def _backward_fake(grad_losses, logits, cu_steps, first_error, margin, backend):
    return torch.empty_like(logits)


define(
    "_pqm_loss_backward(Tensor grad_losses, Tensor logits, Tensor cu_steps, Tensor first_error, float margin, "
    "str backend) -> Tensor",
    _backward, _backward_fake,
)  # fmt: skip


# ---- the public function -----------------------------------------------------------------------


def pqm_loss(
    logits: Tensor,
    cu_steps: Tensor,
    first_error: Tensor,
    *,
    margin: float = 4.0,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool = True,
    backend: str = "auto",
) -> Tensor:
    """PQM's comparative loss over step Q-values (Li and Li, ICLR 2025; SPEC 7; formula above).

    Args:
        logits: [N] each step's Q-value, packed as in `crm_loss`.
        cu_steps: [B + 1] offsets, as in `log_survival`.
        first_error: [B] int32/int64, the 0-based first wrong step, -1 when every step is correct.
        margin: zeta, the margin between correct and wrong steps' Q-values (the official default 4).
        reduction: "mean" (sum / B; 0 for a batch without trajectories), "sum" or "none" ([B]).
        normalizer, validate, backend: as in `crm_loss`.

    Returns:
        A float32 scalar (float64 for float64 logits), or [B] for reduction="none". Finite for
        |logits| up to 1e4. Rank by the Q-values (`crm_kernels.scoring`, how="min" or "last" over
        the raw logits).
    """
    check_logits(logits)
    batch = check_cu_steps(cu_steps, logits)
    if first_error is None:
        raise ValueError("first_error is required: pqm_loss ranks the steps before it above those from it on")
    check_first_error(first_error, batch, logits)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin!r}")
    check_reduction(reduction, normalizer, validate)
    backend = resolve(backend, logits.device, "pqm_loss")
    divisor = reduction_divisor(reduction, normalizer, batch)
    loss = _pqm_loss(logits, cu_steps, first_error, float(margin), divisor, backend, validate)
    return loss / normalizer if isinstance(normalizer, Tensor) else loss
