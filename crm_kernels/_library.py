"""The torch.library ops: one forward and one backward schema per public op, one autograd formula,
one fake (meta) implementation. Backends are implementations behind these schemas, chosen by the
`backend` argument, so autograd, torch.compile (no graph breaks: the op is opaque to Dynamo) and
opcheck see one op whatever runs inside.

Why `custom_op`: with `register_fake` and `register_autograd` (the backward itself a custom op) it
passes all four opcheck tests and torch.compile(fullgraph=True) with aot_eager and inductor, a
Triton kernel launched inside. `triton_op` fails opcheck's fake-tensor test under the interpreter,
and an `autograd.Function` launching Triton directly breaks torch.compile (Dynamo cannot trace
`data_ptr`). Value validation (SPEC 5) runs inside the op when `validate` is true, so it happens before any kernel
and costs no graph break under torch.compile.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backends import kernels
from ._validate import check_values
from ._numerics import accumulate_dtype


# ---- log_survival ----------------------------------------------------------------------------


@torch.library.custom_op("crm_kernels::log_survival", mutates_args=())
def log_survival(logits: Tensor, cu_steps: Tensor, backend: str, validate: bool) -> Tensor:
    """log S(t) for every step (SPEC 1)."""
    if validate:
        check_values(logits, cu_steps)
    return kernels(backend).log_survival_forward(logits, cu_steps)


@log_survival.register_fake
def _(logits, cu_steps, backend, validate):
    return logits.new_empty(logits.shape, dtype=accumulate_dtype(logits.dtype))


@torch.library.custom_op("crm_kernels::log_survival_backward", mutates_args=())
def log_survival_backward(grad_log_survival: Tensor, logits: Tensor, cu_steps: Tensor, backend: str) -> Tensor:
    """d/dx_t = -h_t * sum_{k>=t} g_k within the trajectory (SPEC 3)."""
    return kernels(backend).log_survival_backward(grad_log_survival, logits, cu_steps)


@log_survival_backward.register_fake
def _(grad_log_survival, logits, cu_steps, backend):
    return torch.empty_like(logits)


def _log_survival_setup_context(ctx, inputs, output):
    logits, cu_steps, backend, _ = inputs
    ctx.save_for_backward(logits, cu_steps)
    ctx.backend = backend


def _log_survival_backward(ctx, grad_log_survival):
    logits, cu_steps = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = log_survival_backward(grad_log_survival, logits, cu_steps, ctx.backend)
    return grad_logits, None, None, None


log_survival.register_autograd(_log_survival_backward, setup_context=_log_survival_setup_context)


# ---- crm_loss --------------------------------------------------------------------------------


@torch.library.custom_op("crm_kernels::crm_loss", mutates_args=())
def crm_loss(
    logits: Tensor, cu_steps: Tensor, outcome: Tensor, first_error: Tensor | None,
    w_survive: float, w_wrong: float, w_first_error: float, backend: str, validate: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per-trajectory losses l_i (SPEC 3) and log S(T), which the backward needs."""
    if validate:
        check_values(logits, cu_steps, outcome, first_error)
    return kernels(backend).crm_loss_forward(logits, cu_steps, outcome, first_error, w_survive, w_wrong, w_first_error)


@crm_loss.register_fake
def _(logits, cu_steps, outcome, first_error, w_survive, w_wrong, w_first_error, backend, validate):
    batch = cu_steps.shape[0] - 1
    per_trajectory = logits.new_empty((batch,), dtype=accumulate_dtype(logits.dtype))
    return per_trajectory, torch.empty_like(per_trajectory)


@torch.library.custom_op("crm_kernels::crm_loss_backward", mutates_args=())
def crm_loss_backward(
    grad_losses: Tensor, logits: Tensor, cu_steps: Tensor, outcome: Tensor, first_error: Tensor | None,
    log_survival_total: Tensor, w_survive: float, w_wrong: float, w_first_error: float, backend: str,
) -> Tensor:  # fmt: skip
    return kernels(backend).crm_loss_backward(
        grad_losses, logits, cu_steps, outcome, first_error, log_survival_total, w_survive, w_wrong, w_first_error
    )


@crm_loss_backward.register_fake
def _(grad_losses, logits, cu_steps, outcome, first_error, log_survival_total, w_survive, w_wrong, w_first_error,
      backend):  # fmt: skip
    return torch.empty_like(logits)


def _crm_loss_setup_context(ctx, inputs, output):
    logits, cu_steps, outcome, first_error, w_survive, w_wrong, w_first_error, backend, _ = inputs
    _, log_survival_total = output
    ctx.save_for_backward(logits, cu_steps, outcome, first_error, log_survival_total)
    ctx.weights = (w_survive, w_wrong, w_first_error)
    ctx.backend = backend
    # log S(T) is returned for the backward pass, not as a differentiable result.
    ctx.mark_non_differentiable(log_survival_total)


def _crm_loss_backward(ctx, grad_losses, _grad_log_survival_total):
    logits, cu_steps, outcome, first_error, log_survival_total = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = crm_loss_backward(
            grad_losses, logits, cu_steps, outcome, first_error, log_survival_total, *ctx.weights, ctx.backend
        )
    return grad_logits, None, None, None, None, None, None, None, None


crm_loss.register_autograd(_crm_loss_backward, setup_context=_crm_loss_setup_context)
