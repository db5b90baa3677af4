"""log_survival: log S(t) = sum_{k<=t} log(1 - sigmoid(x_k)) within each trajectory (SPEC 1).

Backward (SPEC 3): d/dx_t = -h_t * sum_{k>=t} g_k within the trajectory, h_t = sigmoid(x_t).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._backends import kernels, resolve
from .._numerics import accumulate_dtype
from .._validate import check_cu_steps, check_logits, check_values

# ---- the private ops: one schema for every backend ------------------------------------------


@torch.library.custom_op("crm_kernels::_log_survival", mutates_args=())
def _log_survival(logits: Tensor, cu_steps: Tensor, backend: str, validate: bool) -> Tensor:
    if validate:
        check_values(logits, cu_steps)
    return kernels(backend).log_survival_forward(logits, cu_steps)


@_log_survival.register_fake
def _(logits, cu_steps, backend, validate):
    return logits.new_empty(logits.shape, dtype=accumulate_dtype(logits.dtype))


@torch.library.custom_op("crm_kernels::_log_survival_backward", mutates_args=())
def _log_survival_backward(grad_log_survival: Tensor, logits: Tensor, cu_steps: Tensor, backend: str) -> Tensor:
    return kernels(backend).log_survival_backward(grad_log_survival, logits, cu_steps)


@_log_survival_backward.register_fake
def _(grad_log_survival, logits, cu_steps, backend):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, cu_steps, backend, _ = inputs
    ctx.save_for_backward(logits, cu_steps)
    ctx.backend = backend


def _backward(ctx, grad_log_survival):
    logits, cu_steps = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = _log_survival_backward(grad_log_survival, logits, cu_steps, ctx.backend)
    return grad_logits, None, None, None


_log_survival.register_autograd(_backward, setup_context=_setup_context)


# ---- the public function ---------------------------------------------------------------------


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
    return _log_survival(logits, cu_steps, resolve(backend, logits.device), validate)
