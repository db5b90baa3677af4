"""Eager PyTorch versions of the CRM ops: the test oracle and the benchmark baselines.

Two shapes of the same math (SPEC sections 1, 3, 4):

- `*_loop`: one trajectory at a time, the way research code is usually written;
- `*_padded`: the packed batch scattered into a [B, max_len] matrix with a mask, the vectorised
  way most PRM code works. `crm_loss_from_padded` is that code on already-padded inputs.

Both accumulate in float32 (float64 for float64 logits) and use the softplus, log1mexp and clamp
forms of SPEC 4, so run on float64 inputs they are the float64 math the kernels are tested
against. Their gradients come from autograd, independently of the kernels' hand-written backward.
"""

from __future__ import annotations

import math

import torch

from ._numerics import MAX_LOG_SURVIVAL, accumulate_dtype, reduce_losses, softplus

def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - e^a) for a < 0. Each branch is fed only its own range so that the branch not taken
    cannot put inf into the gradient of torch.where; torch.where rather than clamp, because clamp's
    gradient is 0 at NaN and SPEC 4 wants NaN to reach the whole trajectory's gradient."""
    neg_ln2 = -math.log(2.0)
    near_zero = a > neg_ln2
    return torch.where(
        near_zero,
        torch.log(-torch.expm1(torch.where(near_zero, a, neg_ln2))),
        torch.log1p(-torch.exp(torch.where(near_zero, neg_ln2, a))),
    )


def flawed_loss(log_survival_total: torch.Tensor) -> torch.Tensor:
    """L_W = -log(1 - S(T)), with log S(T) clamped below 0 (SPEC 4); NaN passes the clamp.

    The clamp passes the gradient through, as in the kernels: dL_W/dx_t is -h_t S / (1 - S) taken
    at the clamped value, not 0 (a torch.where would cut it, and a flawed trajectory whose steps
    all sit below about -88 would get no push from L_W)."""
    pass_through = log_survival_total - log_survival_total.detach()  # 0, with gradient 1
    clamped = torch.where(log_survival_total > MAX_LOG_SURVIVAL, MAX_LOG_SURVIVAL + pass_through, log_survival_total)
    return -log1mexp(clamped)


def combine_losses(survive_nll, first_error_nll, outcome, first_error, weights):
    """l_i of SPEC 3 from L_S = -log S(T) and L_z, per trajectory."""
    w_survive, w_wrong, w_first_error = weights
    flawed = w_wrong * flawed_loss(-survive_nll)
    if first_error is not None:
        flawed = flawed + torch.where(first_error >= 0, w_first_error * first_error_nll, 0.0)
    return torch.where(outcome.bool(), w_survive * survive_nll, flawed)


# ---- padded / masked -------------------------------------------------------------------------


def pad(logits: torch.Tensor, cu_steps: torch.Tensor, max_len: int | None = None):
    """Packed [N] -> (padded [B, max_len] filled with 0, mask [B, max_len]). Reads max_len from
    the offsets (a device sync) unless given."""
    lengths = cu_steps[1:] - cu_steps[:-1]
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    positions = torch.arange(max_len, device=logits.device)
    mask = positions < lengths[:, None]
    padded = logits.new_zeros(lengths.numel(), max_len)
    padded[mask] = logits
    return padded, mask


def log_survival_from_padded(padded_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = padded_logits.to(accumulate_dtype(padded_logits.dtype))
    return -torch.cumsum(torch.where(mask, softplus(x), 0.0), dim=1)


def crm_loss_from_padded(padded_logits, mask, outcome, first_error=None, weights=(1.0, 1.0, 1.0), reduction="mean",
                         normalizer=None):  # fmt: skip
    x = padded_logits.to(accumulate_dtype(padded_logits.dtype))
    softplus_terms = torch.where(mask, softplus(x), 0.0)
    survive_nll = softplus_terms.sum(dim=1)
    first_error_nll = None
    if first_error is not None:
        positions = torch.arange(x.shape[1], device=x.device)
        z = first_error[:, None]
        first_error_nll = torch.where(positions < z, softplus_terms, 0.0).sum(dim=1) + torch.where(
            positions == z, softplus(-x), 0.0
        ).sum(dim=1)
    losses = combine_losses(survive_nll, first_error_nll, outcome, first_error, weights)
    return reduce_losses(losses, reduction, normalizer)


def log_survival_padded(logits: torch.Tensor, cu_steps: torch.Tensor) -> torch.Tensor:
    padded, mask = pad(logits, cu_steps)
    return log_survival_from_padded(padded, mask)[mask]


def crm_loss_padded(logits, cu_steps, outcome, first_error=None, weights=(1.0, 1.0, 1.0), reduction="mean",
                    normalizer=None):  # fmt: skip
    padded, mask = pad(logits, cu_steps)
    return crm_loss_from_padded(padded, mask, outcome, first_error, weights, reduction, normalizer)


# ---- ragged, no padding ----------------------------------------------------------------------


def crm_loss_ragged(logits, cu_steps, outcome, first_error=None, weights=(1.0, 1.0, 1.0), reduction="mean",
                    normalizer=None):  # fmt: skip
    """Per-trajectory sums over the packed steps with index_add_ (deterministic on the CPU), the
    way a careful user avoids padding in eager PyTorch. There is no ragged eager form of
    log_survival: a per-segment scan needs padding or a loop (a global cumsum minus each segment's
    start cancels, SPEC 4)."""
    x = logits.to(accumulate_dtype(logits.dtype))
    lengths = cu_steps[1:] - cu_steps[:-1]
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=x.device), lengths, output_size=x.numel())
    softplus_terms = softplus(x)
    survive_nll = x.new_zeros(lengths.numel()).index_add_(0, owner, softplus_terms)
    first_error_nll = None
    if first_error is not None:
        index = torch.arange(x.numel(), device=x.device) - cu_steps[:-1][owner]  # step index within its trajectory
        z = first_error[owner]
        terms = torch.where(index < z, softplus_terms, 0.0) + torch.where(index == z, softplus(-x), 0.0)
        first_error_nll = x.new_zeros(lengths.numel()).index_add_(0, owner, terms)
    losses = combine_losses(survive_nll, first_error_nll, outcome, first_error, weights)
    return reduce_losses(losses, reduction, normalizer)


# ---- per-trajectory loop ---------------------------------------------------------------------


def log_survival_loop(logits: torch.Tensor, cu_steps: torch.Tensor) -> torch.Tensor:
    x = logits.to(accumulate_dtype(logits.dtype))
    bounds = cu_steps.tolist()
    pieces = [-torch.cumsum(softplus(x[start:end]), 0) for start, end in zip(bounds[:-1], bounds[1:])]
    return torch.cat(pieces) if pieces else x.new_zeros(0)


def crm_loss_loop(logits, cu_steps, outcome, first_error=None, weights=(1.0, 1.0, 1.0), reduction="mean",
                  normalizer=None):  # fmt: skip
    w_survive, w_wrong, w_first_error = weights
    x = logits.to(accumulate_dtype(logits.dtype))
    bounds = cu_steps.tolist()
    correct = outcome.tolist()
    known = first_error.tolist() if first_error is not None else [-1] * len(correct)
    losses = []
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        steps = x[start:end]
        log_survival_total = -softplus(steps).sum()
        if correct[i]:
            losses.append(-w_survive * log_survival_total)
            continue
        loss = w_wrong * flawed_loss(log_survival_total)
        z = known[i]
        if z >= 0:
            loss = loss + w_first_error * (softplus(steps[:z]).sum() + softplus(-steps[z]))
        losses.append(loss)
    stacked = torch.stack(losses) if losses else x.new_zeros(0)
    return reduce_losses(stacked, reduction, normalizer)


# ---- the baseline objectives (SPEC 7) ----------------------------------------------------------
# The losses the CRM paper compares against, in the same packed layout. Each is written once here,
# vectorised over the batch; the "torch" backend runs these, and their gradients come from autograd.


def prm_loss_reference(logits, step_labels, reduction="mean", normalizer=None):
    """PRM (Math-Shepherd): per-step binary cross-entropy with logits, softplus(x_t) - y_t x_t,
    against hard or soft (Monte-Carlo) labels y_t in [0, 1]. "mean" divides by N, the steps."""
    x = logits.to(accumulate_dtype(logits.dtype))
    return reduce_losses(softplus(x) - step_labels.to(x.dtype) * x, reduction, normalizer)


def orm_loss_reference(logits, cu_steps, outcome, reduction="mean", normalizer=None):
    """ORM: binary cross-entropy with logits of each trajectory's last step against its outcome.
    Every trajectory needs a last step (validated)."""
    x = logits.to(accumulate_dtype(logits.dtype))[cu_steps[1:].long() - 1]
    return reduce_losses(softplus(x) - outcome.to(x.dtype) * x, reduction, normalizer)


# Stands in for -inf (an empty log-sum-exp) where autograd goes through logcumsumexp and logsumexp:
# their backward evaluates exp(input - output), NaN when both are -inf. e^-1e30 is 0 in every dtype,
# so the values are those of -inf.
_LOG_ZERO = -1e30


def pqm_loss_from_padded(padded_logits, mask, first_error, margin=4.0, reduction="mean", normalizer=None):
    """PQM's comparative loss (Li and Li, ICLR 2025; `ranking_loss` in WindyLee0822/Process_Q_Model,
    train_main.py), with log-sum-exp for its exponentials. Per trajectory with first wrong step z
    (z = n when first_error is -1), correct steps C = [0, z), wrong steps W = [z, n), margin m:

        log D_0 = log(1 + sum_{w in W} e^{x_w + m}) = softplus(logsumexp_W(x + m))
        log D_k = log(D_0 + sum_{j <= k} e^{x_j}) = logaddexp(log D_0, logcumsumexp_C(x)_k),  k in C
        l = [sum_{k in C} (log D_k - x_k) + [W non-empty] log D_0] / (|C| + [W non-empty])

    The leading 1 is e^{Q_0} of the initial state; the official code also adds 1e-5 inside each D,
    dropped here (SPEC 7). An empty trajectory has no terms: loss 0."""
    x = padded_logits.to(accumulate_dtype(padded_logits.dtype))
    lengths = mask.sum(dim=1)
    z = torch.where(first_error >= 0, first_error.long(), lengths)
    positions = torch.arange(x.shape[1], device=x.device)
    correct = positions < z[:, None]
    wrong = mask & ~correct
    log_d0 = softplus(torch.logsumexp(torch.where(wrong, x + margin, _LOG_ZERO), dim=1)) if x.shape[1] else x.new_zeros(x.shape[0])
    log_d = torch.logaddexp(log_d0[:, None], torch.logcumsumexp(torch.where(correct, x, _LOG_ZERO), dim=1))
    has_wrong = wrong.any(dim=1)
    total = torch.where(correct, log_d - x, 0.0).sum(dim=1) + torch.where(has_wrong, log_d0, 0.0)
    count = z + has_wrong.long()
    losses = torch.where(count > 0, total / count.clamp(min=1), 0.0)
    return reduce_losses(losses, reduction, normalizer)


def pqm_loss_padded(logits, cu_steps, first_error, margin=4.0, reduction="mean", normalizer=None):
    padded, mask = pad(logits, cu_steps)
    return pqm_loss_from_padded(padded, mask, first_error, margin, reduction, normalizer)


def pqm_loss_loop(logits, cu_steps, first_error, margin=4.0, reduction="mean", normalizer=None):
    """PQM one trajectory at a time, each log D_k a log-sum-exp over its own terms, as the paper
    writes it: the oracle for pqm_loss_from_padded and the kernels."""
    x = logits.to(accumulate_dtype(logits.dtype))
    bounds, known = cu_steps.tolist(), first_error.tolist()
    zero = x.new_zeros(1)
    losses = []
    for (start, end), first_wrong in zip(zip(bounds[:-1], bounds[1:]), known):
        steps = x[start:end]
        z = first_wrong if first_wrong >= 0 else len(steps)
        wrong = steps[z:] + margin
        terms = [torch.logsumexp(torch.cat([zero, wrong]), 0)] if len(wrong) else []
        terms += [torch.logsumexp(torch.cat([zero, steps[: k + 1], wrong]), 0) - steps[k] for k in range(z)]
        losses.append(torch.stack(terms).mean() if terms else x.new_zeros(()))
    stacked = torch.stack(losses) if losses else x.new_zeros(0)
    return reduce_losses(stacked, reduction, normalizer)
