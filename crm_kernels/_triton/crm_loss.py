"""crm_loss in Triton: the per-trajectory loss l_i of SPEC 3 and its gradient.

Forward: two segmented sums over each trajectory, sum_t softplus(x_t) and
L_z = sum_{t<z} softplus(x_t) + softplus(-x_z), scanned together; the lane holding a trajectory's
last step applies the loss epilogue. Backward: elementwise once each step knows its trajectory.
"""

import torch
import triton
import triton.language as tl

from .._numerics import accumulate_dtype, reduce_by
from . import _math
from ._segments import (
    BLOCK_STEPS,
    GATHERED,
    SIZES,
    add_carry,
    chunk_layout,
    launch_scan,
    byte_flags,
    launch_options,
    search_steps,
    segmented_cumsum2,
    store_chunk_freshness,
    store_chunk_summary,
    tl_dtype,
)


@triton.jit
def _first_error_of(first_error_ptr, seg, HAS_FIRST_ERROR: tl.constexpr):
    if HAS_FIRST_ERROR:
        return tl.load(first_error_ptr + seg).to(tl.int64)
    else:
        return tl.full(seg.shape, -1, tl.int64)


@triton.jit(do_not_specialize=SIZES, do_not_specialize_on_alignment=GATHERED + ("losses_ptr", "log_survival_total_ptr"))
def _crm_loss_forward_kernel(
    logits_ptr, cu_steps_ptr, outcome_ptr, first_error_ptr, losses_ptr, log_survival_total_ptr,
    w_survive: tl.float64, w_wrong: tl.float64, w_first_error: tl.float64,
    num_steps: tl.int64, num_trajectories: tl.int64, search_steps: tl.int32,
    tails_ptr, fresh_ptr, carries_ptr, num_chunks: tl.int32,
    HAS_FIRST_ERROR: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, FINAL: tl.constexpr,
):  # fmt: skip
    chunk_start, pos, valid, step, seg, seg_begin, seg_end, first_pos = chunk_layout(
        cu_steps_ptr, num_steps, num_trajectories, search_steps, BLOCK, False
    )
    x = tl.load(logits_ptr + step, mask=valid, other=0.0).to(ACC)
    tail = _math.softplus_tail(x)
    softplus = tl.where(valid, tl.maximum(x, 0.0) + tail, 0.0)
    first_error = _first_error_of(first_error_ptr, seg, HAS_FIRST_ERROR)
    index = step - seg_begin
    first_error_terms = tl.where(valid, _math.first_error_term(x, softplus, tail, index, first_error), 0.0)
    softplus_sums, first_error_sums = segmented_cumsum2(softplus, first_error_terms, ((pos == first_pos) & valid).to(tl.int32))
    if FINAL:
        softplus_sums = add_carry(softplus_sums, 0, first_pos, chunk_start, carries_ptr, num_chunks)
        first_error_sums = add_carry(first_error_sums, 1, first_pos, chunk_start, carries_ptr, num_chunks)
        last = valid & (step == seg_end - 1)
        correct = tl.load(outcome_ptr + seg, mask=last, other=0) != 0
        loss = _math.trajectory_loss(
            softplus_sums, first_error_sums, correct, first_error >= 0,
            tl.cast(w_survive, ACC), tl.cast(w_wrong, ACC), tl.cast(w_first_error, ACC),
        )  # fmt: skip
        tl.store(losses_ptr + seg, loss, mask=last)
        tl.store(log_survival_total_ptr + seg, -softplus_sums, mask=last)
    else:
        store_chunk_summary(softplus_sums, 0, tails_ptr, num_chunks, BLOCK)
        store_chunk_summary(first_error_sums, 1, tails_ptr, num_chunks, BLOCK)
        store_chunk_freshness(valid, first_pos, chunk_start, fresh_ptr)


@triton.jit(do_not_specialize=SIZES, do_not_specialize_on_alignment=GATHERED + ("grad_losses_ptr", "log_survival_total_ptr"))
def _crm_loss_backward_kernel(
    grad_losses_ptr, logits_ptr, cu_steps_ptr, outcome_ptr, first_error_ptr, log_survival_total_ptr, grad_logits_ptr,
    w_survive: tl.float64, w_wrong: tl.float64, w_first_error: tl.float64,
    num_steps: tl.int64, num_trajectories: tl.int64, search_steps: tl.int32,
    HAS_FIRST_ERROR: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    chunk_start, pos, valid, step, seg, seg_begin, seg_end, first_pos = chunk_layout(
        cu_steps_ptr, num_steps, num_trajectories, search_steps, BLOCK, False
    )
    x = tl.load(logits_ptr + step, mask=valid, other=0.0).to(ACC)
    upstream = tl.load(grad_losses_ptr + seg).to(ACC)
    correct = tl.load(outcome_ptr + seg) != 0
    log_survival = tl.load(log_survival_total_ptr + seg).to(ACC)
    first_error = _first_error_of(first_error_ptr, seg, HAS_FIRST_ERROR)
    coef = upstream * _math.trajectory_grad_coef(log_survival, correct, tl.cast(w_survive, ACC), tl.cast(w_wrong, ACC))
    first_error_grad = tl.where(first_error >= 0, upstream * tl.cast(w_first_error, ACC), 0.0)
    grad = _math.step_grad(x, _math.sigmoid(x), coef, first_error_grad, step - seg_begin, first_error)
    tl.store(grad_logits_ptr + step, grad.to(grad_logits_ptr.dtype.element_ty), mask=valid)


def _first_error_arg(first_error, logits):
    # A dummy pointer when absent; HAS_FIRST_ERROR=False keeps the kernel from reading it.
    return (first_error.contiguous(), True) if first_error is not None else (logits, False)


def crm_loss_forward(logits, cu_steps, outcome, first_error, w_survive, w_wrong, w_first_error, normalizer=None,
                     block=BLOCK_STEPS):  # fmt: skip
    logits, cu_steps, outcome = logits.contiguous(), cu_steps.contiguous(), byte_flags(outcome.contiguous())
    acc_dtype = accumulate_dtype(logits.dtype)
    num_steps, num_trajectories = logits.numel(), max(cu_steps.numel() - 1, 0)
    # Empty trajectories have no step to write their loss: they are correct ones (validated), loss 0.
    losses = torch.zeros(num_trajectories, dtype=acc_dtype, device=logits.device)
    log_survival_total = torch.zeros(num_trajectories, dtype=acc_dtype, device=logits.device)
    if num_steps == 0 or num_trajectories == 0:
        return reduce_by(losses, normalizer), log_survival_total
    first_error, has_first_error = _first_error_arg(first_error, logits)
    launch_scan(
        _crm_loss_forward_kernel, num_steps, 2, acc_dtype, logits.device, block,
        logits, cu_steps, outcome, first_error, losses, log_survival_total,
        w_survive, w_wrong, w_first_error, num_steps, num_trajectories, search_steps(num_trajectories),
        HAS_FIRST_ERROR=has_first_error, ACC=tl_dtype(acc_dtype),
    )  # fmt: skip
    return reduce_by(losses, normalizer), log_survival_total


def crm_loss_backward(
    grad_losses, logits, cu_steps, outcome, first_error, log_survival_total, w_survive, w_wrong, w_first_error,
    block=BLOCK_STEPS,
):  # fmt: skip
    logits, cu_steps, outcome = logits.contiguous(), cu_steps.contiguous(), byte_flags(outcome.contiguous())
    num_steps, num_trajectories = logits.numel(), max(cu_steps.numel() - 1, 0)
    grad_logits = torch.zeros_like(logits) if num_trajectories == 0 else torch.empty_like(logits)
    if num_steps == 0 or num_trajectories == 0:
        return grad_logits
    first_error, has_first_error = _first_error_arg(first_error, logits)
    acc_dtype = accumulate_dtype(logits.dtype)
    _crm_loss_backward_kernel[(triton.cdiv(num_steps, block),)](
        grad_losses.contiguous(), logits, cu_steps, outcome, first_error, log_survival_total.contiguous(), grad_logits,
        w_survive, w_wrong, w_first_error, num_steps, num_trajectories, search_steps(num_trajectories),
        HAS_FIRST_ERROR=has_first_error, ACC=tl_dtype(acc_dtype), BLOCK=block, **launch_options(acc_dtype),
    )  # fmt: skip
    return grad_logits
