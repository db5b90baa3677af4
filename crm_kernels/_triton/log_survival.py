"""log_survival in Triton: log S(t) = -sum_{k<=t} softplus(x_k) per trajectory (SPEC 1), and the
backward d/dx_t = -h_t * sum_{k>=t} g_k, a reverse segmented scan (SPEC 3)."""

import torch
import triton
import triton.language as tl

from .._numerics import accumulate_dtype
from . import _math
from ._segments import (
    BLOCK_STEPS,
    GATHERED,
    SIZES,
    add_carry,
    chunk_layout,
    launch_scan,
    search_steps,
    segmented_cumsum,
    store_chunk_freshness,
    store_chunk_summary,
    tl_dtype,
)


@triton.jit(do_not_specialize=SIZES, do_not_specialize_on_alignment=GATHERED)
def _log_survival_forward_kernel(
    logits_ptr, cu_steps_ptr, log_survival_ptr, num_steps: tl.int64, num_trajectories: tl.int64, search_steps: tl.int32,
    tails_ptr, fresh_ptr, carries_ptr, num_chunks: tl.int32,
    ACC: tl.constexpr, BLOCK: tl.constexpr, FINAL: tl.constexpr,
):  # fmt: skip
    chunk_start, pos, valid, step, seg, seg_begin, seg_end, first_pos = chunk_layout(
        cu_steps_ptr, num_steps, num_trajectories, search_steps, BLOCK, False
    )
    x = tl.load(logits_ptr + step, mask=valid, other=0.0).to(ACC)
    softplus = tl.where(valid, _math.softplus(x), 0.0)
    sums = segmented_cumsum(softplus, ((pos == first_pos) & valid).to(tl.int32))
    if FINAL:
        sums = add_carry(sums, 0, first_pos, chunk_start, carries_ptr, num_chunks)
        tl.store(log_survival_ptr + step, -sums, mask=valid)
    else:
        store_chunk_summary(sums, 0, tails_ptr, num_chunks, BLOCK)
        store_chunk_freshness(valid, first_pos, chunk_start, fresh_ptr)


@triton.jit(do_not_specialize=SIZES, do_not_specialize_on_alignment=GATHERED)
def _log_survival_backward_kernel(
    grad_log_survival_ptr, logits_ptr, cu_steps_ptr, grad_logits_ptr,
    num_steps: tl.int64, num_trajectories: tl.int64, search_steps: tl.int32,
    tails_ptr, fresh_ptr, carries_ptr, num_chunks: tl.int32,
    ACC: tl.constexpr, BLOCK: tl.constexpr, FINAL: tl.constexpr,
):  # fmt: skip
    chunk_start, pos, valid, step, seg, seg_begin, seg_end, first_pos = chunk_layout(
        cu_steps_ptr, num_steps, num_trajectories, search_steps, BLOCK, True
    )
    upstream = tl.load(grad_log_survival_ptr + step, mask=valid, other=0.0).to(ACC)
    sums = segmented_cumsum(upstream, ((pos == first_pos) & valid).to(tl.int32))
    if FINAL:
        sums = add_carry(sums, 0, first_pos, chunk_start, carries_ptr, num_chunks)
        x = tl.load(logits_ptr + step, mask=valid, other=0.0).to(ACC)
        grad = -_math.sigmoid(x) * sums
        tl.store(grad_logits_ptr + step, grad.to(grad_logits_ptr.dtype.element_ty), mask=valid)
    else:
        store_chunk_summary(sums, 0, tails_ptr, num_chunks, BLOCK)
        store_chunk_freshness(valid, first_pos, chunk_start, fresh_ptr)


def log_survival_forward(logits: torch.Tensor, cu_steps: torch.Tensor, block: int = BLOCK_STEPS) -> torch.Tensor:
    logits, cu_steps = logits.contiguous(), cu_steps.contiguous()
    acc_dtype = accumulate_dtype(logits.dtype)
    num_steps, num_trajectories = logits.numel(), cu_steps.numel() - 1
    if num_steps == 0 or num_trajectories < 1:
        return torch.zeros(num_steps, dtype=acc_dtype, device=logits.device)
    log_survival = torch.empty(num_steps, dtype=acc_dtype, device=logits.device)
    launch_scan(
        _log_survival_forward_kernel, num_steps, 1, acc_dtype, logits.device, block,
        logits, cu_steps, log_survival, num_steps, num_trajectories, search_steps(num_trajectories),
        ACC=tl_dtype(acc_dtype),
    )  # fmt: skip
    return log_survival


def log_survival_backward(
    grad_log_survival: torch.Tensor, logits: torch.Tensor, cu_steps: torch.Tensor, block: int = BLOCK_STEPS
) -> torch.Tensor:
    logits, cu_steps = logits.contiguous(), cu_steps.contiguous()
    grad_log_survival = grad_log_survival.contiguous()
    acc_dtype = accumulate_dtype(logits.dtype)
    num_steps, num_trajectories = logits.numel(), cu_steps.numel() - 1
    if num_steps == 0 or num_trajectories < 1:
        return torch.zeros_like(logits)
    grad_logits = torch.empty_like(logits)
    launch_scan(
        _log_survival_backward_kernel, num_steps, 1, acc_dtype, logits.device, block,
        grad_log_survival, logits, cu_steps, grad_logits, num_steps, num_trajectories, search_steps(num_trajectories),
        ACC=tl_dtype(acc_dtype),
    )  # fmt: skip
    return grad_logits
