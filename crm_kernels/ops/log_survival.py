"""log_survival: log S(t) = sum_{k<=t} log(1 - sigmoid(x_k)) within each trajectory (SPEC 1).

Backward (SPEC 3): d/dx_t = -h_t * sum_{k>=t} g_k within the trajectory, h_t = sigmoid(x_t).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._backends import kernels, resolve
from .._numerics import accumulate_dtype
from .._validate import check_cu_steps, check_logits, check_values
from ._library import define

# ---- the private ops: one schema for every backend ------------------------------------------
# Their autograd (saving the inputs, calling _log_survival_backward) is C++: csrc/autograd.cpp.


def _forward(logits: Tensor, cu_steps: Tensor, backend: str, validate: bool) -> Tensor:
    if validate:
        check_values(logits, cu_steps)
    return kernels(backend).log_survival_forward(logits, cu_steps)


def _forward_fake(logits, cu_steps, backend, validate):
    return logits.new_empty(logits.shape, dtype=accumulate_dtype(logits.dtype))


_log_survival = define(
    "_log_survival(Tensor logits, Tensor cu_steps, str backend, bool validate) -> Tensor",
    _forward, _forward_fake, differentiable=True,
)  # fmt: skip


def _backward(grad_log_survival: Tensor, logits: Tensor, cu_steps: Tensor, backend: str) -> Tensor:
    return kernels(backend).log_survival_backward(grad_log_survival, logits, cu_steps)


def _backward_fake(grad_log_survival, logits, cu_steps, backend):
    return torch.empty_like(logits)


define(
    "_log_survival_backward(Tensor grad_log_survival, Tensor logits, Tensor cu_steps, str backend) -> Tensor",
    _backward, _backward_fake,
)  # fmt: skip


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
