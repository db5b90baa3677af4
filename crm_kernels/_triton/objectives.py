"""The baseline objectives of SPEC 7 in Triton, as the C++ kernels (csrc/cpu/objectives.cpp)
compute them: prm_loss per step, orm_loss at each trajectory's last step, and pqm_loss over BLOCK
trajectories per program, step i of each at once (a trajectory's steps are a recursion, so the
lanes go across trajectories), lanes past their own steps masked. PQM's backward runs in float64
for every input dtype, as on the CPU (crm_kernels/ops/pqm_loss.py says why).
"""

import torch
import triton
import triton.language as tl

from .._numerics import accumulate_dtype, reduce_by
from . import _math
from ._segments import launch_options, tl_dtype

BLOCK_STEPS = 1024
BLOCK_TRAJECTORIES = 128
# Sizes are never specialized and per-trajectory pointers not on alignment (see _segments.SIZES).
SIZES = ("num_steps", "num_trajectories")
GATHERED = ("cu_steps_ptr", "outcome_ptr", "first_error_ptr")


# ---- prm_loss: per step ------------------------------------------------------------------------


@triton.jit(do_not_specialize=SIZES)
def _prm_loss_forward_kernel(logits_ptr, step_labels_ptr, losses_ptr, num_steps: tl.int64, ACC: tl.constexpr,
                             BLOCK: tl.constexpr):  # fmt: skip
    step = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = step < num_steps
    x = tl.load(logits_ptr + step, mask=valid, other=0.0).to(ACC)
    y = tl.load(step_labels_ptr + step, mask=valid, other=0.0).to(ACC)
    tl.store(losses_ptr + step, _math.bce_with_logits(x, y), mask=valid)


@triton.jit(do_not_specialize=SIZES)
def _prm_loss_backward_kernel(grad_losses_ptr, logits_ptr, step_labels_ptr, grad_logits_ptr, num_steps: tl.int64,
                              ACC: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    step = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = step < num_steps
    x = tl.load(logits_ptr + step, mask=valid, other=0.0).to(ACC)
    y = tl.load(step_labels_ptr + step, mask=valid, other=0.0).to(ACC)
    upstream = tl.load(grad_losses_ptr + step, mask=valid, other=0.0).to(ACC)
    grad = upstream * _math.bce_with_logits_grad(x, y)
    tl.store(grad_logits_ptr + step, grad.to(grad_logits_ptr.dtype.element_ty), mask=valid)


def prm_loss_forward(logits, step_labels, normalizer=None, block=BLOCK_STEPS):
    logits = logits.contiguous()
    acc_dtype = accumulate_dtype(logits.dtype)
    step_labels = step_labels.to(acc_dtype).contiguous()
    losses = torch.empty(logits.numel(), dtype=acc_dtype, device=logits.device)
    if logits.numel():
        _prm_loss_forward_kernel[(triton.cdiv(logits.numel(), block),)](
            logits, step_labels, losses, logits.numel(), ACC=tl_dtype(acc_dtype), BLOCK=block,
            **launch_options(acc_dtype),
        )  # fmt: skip
    return reduce_by(losses, normalizer)


def prm_loss_backward(grad_losses, logits, step_labels, block=BLOCK_STEPS):
    logits = logits.contiguous()
    acc_dtype = accumulate_dtype(logits.dtype)
    grad_logits = torch.empty_like(logits)
    if logits.numel():
        _prm_loss_backward_kernel[(triton.cdiv(logits.numel(), block),)](
            grad_losses.to(acc_dtype).contiguous(), logits, step_labels.to(acc_dtype).contiguous(), grad_logits,
            logits.numel(), ACC=tl_dtype(acc_dtype), BLOCK=block, **launch_options(acc_dtype),
        )  # fmt: skip
    return grad_logits


# ---- per trajectory: bounds --------------------------------------------------------------------


@triton.jit
def _bounds(cu_steps_ptr, b, valid, num_steps):
    """Trajectory b's steps [begin, end), clamped into [0, num_steps] whatever the offsets hold."""
    begin = tl.load(cu_steps_ptr + b, mask=valid, other=0).to(tl.int64)
    begin = tl.minimum(tl.maximum(begin, 0), num_steps)
    end = tl.load(cu_steps_ptr + b + 1, mask=valid, other=0).to(tl.int64)
    end = tl.minimum(tl.maximum(end, begin), num_steps)
    return begin, end


# ---- orm_loss: each trajectory's last step -----------------------------------------------------


@triton.jit(do_not_specialize=SIZES, do_not_specialize_on_alignment=GATHERED)
def _orm_loss_forward_kernel(logits_ptr, cu_steps_ptr, outcome_ptr, losses_ptr, num_steps: tl.int64,
                             num_trajectories: tl.int64, ACC: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = b < num_trajectories
    begin, end = _bounds(cu_steps_ptr, b, valid, num_steps)
    has_step = valid & (end > begin)  # an empty trajectory (validate=False) gets NaN, and no read
    x = tl.load(logits_ptr + end - 1, mask=has_step, other=0.0).to(ACC)
    target = (tl.load(outcome_ptr + b, mask=valid, other=0) != 0).to(ACC)
    loss = tl.where(has_step, _math.bce_with_logits(x, target), float("nan"))
    tl.store(losses_ptr + b, loss, mask=valid)


@triton.jit(do_not_specialize=SIZES, do_not_specialize_on_alignment=GATHERED + ("grad_losses_ptr",))
def _orm_loss_backward_kernel(grad_losses_ptr, logits_ptr, cu_steps_ptr, outcome_ptr, grad_logits_ptr,
                              num_steps: tl.int64, num_trajectories: tl.int64, ACC: tl.constexpr,
                              BLOCK: tl.constexpr):  # fmt: skip
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = b < num_trajectories
    begin, end = _bounds(cu_steps_ptr, b, valid, num_steps)
    has_step = valid & (end > begin)
    x = tl.load(logits_ptr + end - 1, mask=has_step, other=0.0).to(ACC)
    target = (tl.load(outcome_ptr + b, mask=valid, other=0) != 0).to(ACC)
    upstream = tl.load(grad_losses_ptr + b, mask=valid, other=0.0).to(ACC)
    grad = upstream * _math.bce_with_logits_grad(x, target)
    tl.store(grad_logits_ptr + end - 1, grad.to(grad_logits_ptr.dtype.element_ty), mask=has_step)


def _byte_outcome(outcome):
    return outcome.contiguous().to(torch.uint8) if outcome.dtype == torch.bool else outcome.contiguous()


def orm_loss_forward(logits, cu_steps, outcome, normalizer=None, block=BLOCK_TRAJECTORIES):
    logits, cu_steps = logits.contiguous(), cu_steps.contiguous()
    acc_dtype = accumulate_dtype(logits.dtype)
    batch = max(cu_steps.numel() - 1, 0)
    losses = torch.empty(batch, dtype=acc_dtype, device=logits.device)
    if batch:
        _orm_loss_forward_kernel[(triton.cdiv(batch, block),)](
            logits, cu_steps, _byte_outcome(outcome), losses, logits.numel(), batch, ACC=tl_dtype(acc_dtype),
            BLOCK=block, **launch_options(acc_dtype),
        )  # fmt: skip
    return reduce_by(losses, normalizer)


def orm_loss_backward(grad_losses, logits, cu_steps, outcome, block=BLOCK_TRAJECTORIES):
    logits, cu_steps = logits.contiguous(), cu_steps.contiguous()
    acc_dtype = accumulate_dtype(logits.dtype)
    batch = max(cu_steps.numel() - 1, 0)
    grad_logits = torch.zeros_like(logits)
    if batch:
        _orm_loss_backward_kernel[(triton.cdiv(batch, block),)](
            grad_losses.to(acc_dtype).contiguous(), logits, cu_steps, _byte_outcome(outcome), grad_logits,
            logits.numel(), batch, ACC=tl_dtype(acc_dtype), BLOCK=block, **launch_options(acc_dtype),
        )  # fmt: skip
    return grad_logits


# ---- pqm_loss: BLOCK trajectories in lockstep ----------------------------------------------------


@triton.jit
def _pqm_lanes(logits_ptr, cu_steps_ptr, first_error_ptr, b, valid, num_steps, margin, ACC: tl.constexpr):
    """Each lane's correct steps [begin, wrong_begin) and wrong steps [wrong_begin, end), and
    L_{-1} = log D_0 = softplus(lse over its wrong steps of x + margin)."""
    begin, end = _bounds(cu_steps_ptr, b, valid, num_steps)
    z = tl.load(first_error_ptr + b, mask=valid, other=-1).to(tl.int64)
    # Out of range only with validate=False: clamped, so no step outside the trajectory is read.
    wrong_begin = tl.where(z >= 0, tl.minimum(begin + tl.maximum(z, 0), end), end)
    wrong_lse = tl.full(b.shape, float("-inf"), ACC)
    for i in range(0, tl.max(end - wrong_begin, axis=0)):
        active = wrong_begin + i < end
        x = tl.load(logits_ptr + wrong_begin + i, mask=active, other=0.0).to(ACC) + margin
        wrong_lse = tl.where(active, _math.logaddexp(wrong_lse, x), wrong_lse)
    return begin, wrong_begin, end, _math.softplus(wrong_lse)


@triton.jit(do_not_specialize=SIZES, do_not_specialize_on_alignment=GATHERED)
def _pqm_loss_forward_kernel(logits_ptr, cu_steps_ptr, first_error_ptr, losses_ptr, margin: tl.float64,
                             num_steps: tl.int64, num_trajectories: tl.int64, ACC: tl.constexpr,
                             BLOCK: tl.constexpr):  # fmt: skip
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = b < num_trajectories
    begin, wrong_begin, end, log_d0 = _pqm_lanes(logits_ptr, cu_steps_ptr, first_error_ptr, b, valid, num_steps,
                                                 tl.cast(margin, ACC), ACC)  # fmt: skip
    has_wrong = wrong_begin < end
    total = tl.where(has_wrong, log_d0, 0.0)
    anchor = log_d0  # L_{k-1} = anchor + offset: each term softplus(L_{k-1} - x_k) without L_{k-1}
    offset = tl.zeros_like(log_d0)
    for i in range(0, tl.max(wrong_begin - begin, axis=0)):
        active = begin + i < wrong_begin
        x = tl.load(logits_ptr + begin + i, mask=active, other=0.0).to(ACC)
        term = _math.softplus((anchor - x) + offset)
        total += tl.where(active, term, 0.0)
        anchor = tl.where(active, x, anchor)
        offset = tl.where(active, term, offset)
    terms = ((wrong_begin - begin) + has_wrong.to(tl.int64)).to(ACC)
    tl.store(losses_ptr + b, tl.where(terms > 0, total / tl.maximum(terms, 1.0), 0.0), mask=valid)


@triton.jit
def _to_logits_dtype(grad, grad_logits_ptr):
    """A float64 gradient in the logits' dtype, through float32 below it: the interpreter turned
    float64 straight into bfloat16 zeros."""
    if grad_logits_ptr.dtype.element_ty == tl.float64:
        return grad
    return grad.to(tl.float32).to(grad_logits_ptr.dtype.element_ty)


@triton.jit(do_not_specialize=SIZES, do_not_specialize_on_alignment=GATHERED + ("grad_losses_ptr",))
def _pqm_loss_backward_kernel(grad_losses_ptr, logits_ptr, cu_steps_ptr, first_error_ptr, terms_ptr,
                              grad_logits_ptr, margin: tl.float64, num_steps: tl.int64, num_trajectories: tl.int64,
                              BLOCK: tl.constexpr):  # fmt: skip
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = b < num_trajectories
    begin, wrong_begin, end, log_d0 = _pqm_lanes(logits_ptr, cu_steps_ptr, first_error_ptr, b, valid, num_steps,
                                                 tl.cast(margin, tl.float64), tl.float64)  # fmt: skip
    longest_correct = tl.max(wrong_begin - begin, axis=0)
    terms = ((wrong_begin - begin) + (wrong_begin < end).to(tl.int64)).to(tl.float64)
    upstream = tl.load(grad_losses_ptr + b, mask=valid, other=0.0).to(tl.float64)
    scale = tl.where(terms > 0, upstream / tl.maximum(terms, 1.0), 0.0)
    # t_k = L_k - x_k of every correct step, at the step's position of the float64 workspace.
    anchor = log_d0
    offset = tl.zeros_like(log_d0)
    for i in range(0, longest_correct):
        active = begin + i < wrong_begin
        x = tl.load(logits_ptr + begin + i, mask=active, other=0.0).to(tl.float64)
        offset = tl.where(active, _math.softplus((anchor - x) + offset), offset)
        anchor = tl.where(active, x, anchor)
        tl.store(terms_ptr + begin + i, offset, mask=active)
    # Correct step j: e^{u_j} - sigmoid(L_{j-1} - x_j), u_j = lse_{k > j}(x_j - L_k) walked back as
    # u_{j-1} = (x_{j-1} - x_j) + logaddexp(-t_j, u_j).
    later = tl.full(log_d0.shape, float("-inf"), tl.float64)
    for r in range(0, longest_correct):
        j = longest_correct - 1 - r
        active = begin + j < wrong_begin
        has_before = active & (begin + j > begin)  # j > 0, as a lane mask
        x_j = tl.load(logits_ptr + begin + j, mask=active, other=0.0).to(tl.float64)
        x_before = tl.where(has_before, tl.load(logits_ptr + begin + j - 1, mask=has_before, other=0.0).to(tl.float64),
                            log_d0)  # fmt: skip
        t_before = tl.load(terms_ptr + begin + j - 1, mask=has_before, other=0.0)
        t_j = tl.load(terms_ptr + begin + j, mask=active, other=0.0)
        grad = scale * (tl.exp(later) - _math.sigmoid((x_before - x_j) + t_before))
        tl.store(grad_logits_ptr + begin + j, _to_logits_dtype(grad, grad_logits_ptr), mask=active)
        later = tl.where(active, (x_before - x_j) + _math.logaddexp(-t_j, later), later)
    # Wrong step w: e^{x_w + m - L_{-1} + logaddexp(0, u)}, u = lse_k(L_{-1} - L_k).
    inverse_sum = _math.logaddexp(tl.zeros_like(later), later)
    for i in range(0, tl.max(end - wrong_begin, axis=0)):
        active = wrong_begin + i < end
        x = tl.load(logits_ptr + wrong_begin + i, mask=active, other=0.0).to(tl.float64)
        grad = scale * tl.exp(((x + margin) - log_d0) + inverse_sum)
        tl.store(grad_logits_ptr + wrong_begin + i, _to_logits_dtype(grad, grad_logits_ptr), mask=active)


def pqm_loss_forward(logits, cu_steps, first_error, margin, normalizer=None, block=BLOCK_TRAJECTORIES):
    logits, cu_steps = logits.contiguous(), cu_steps.contiguous()
    acc_dtype = accumulate_dtype(logits.dtype)
    batch = max(cu_steps.numel() - 1, 0)
    losses = torch.empty(batch, dtype=acc_dtype, device=logits.device)
    if batch:
        _pqm_loss_forward_kernel[(triton.cdiv(batch, block),)](
            logits, cu_steps, first_error.contiguous(), losses, float(margin), logits.numel(), batch,
            ACC=tl_dtype(acc_dtype), BLOCK=block, **launch_options(acc_dtype),
        )  # fmt: skip
    return reduce_by(losses, normalizer)


def pqm_loss_backward(grad_losses, logits, cu_steps, first_error, margin, block=BLOCK_TRAJECTORIES):
    logits, cu_steps = logits.contiguous(), cu_steps.contiguous()
    batch = max(cu_steps.numel() - 1, 0)
    grad_logits = torch.zeros_like(logits)
    if batch and logits.numel():
        terms = torch.empty(logits.numel(), dtype=torch.float64, device=logits.device)
        _pqm_loss_backward_kernel[(triton.cdiv(batch, block),)](
            grad_losses.to(torch.float64).contiguous(), logits, cu_steps, first_error.contiguous(), terms,
            grad_logits, float(margin), logits.numel(), batch, BLOCK=block, **launch_options(torch.float64),
        )  # fmt: skip
    return grad_logits
