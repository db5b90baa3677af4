"""The "torch" backend: the padded eager reference behind the kernel interface of the compiled
backends, so that every backend runs through the same private ops (crm_kernels/ops/).

It runs on any device torch supports and is the fallback where no kernel is built. Its backward
recomputes the forward and differentiates it with torch.func.vjp: a custom op's implementation runs
below the autograd dispatch key, where plain autograd records nothing, and the functorch
transform brings its own. The gradient is therefore autograd's, independent of the kernels'
hand-written backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._numerics import reduce_by


def _vjp(forward, logits: Tensor, grad_output: Tensor) -> Tensor:
    _, pullback = torch.func.vjp(forward, logits)
    (grad_logits,) = pullback(grad_output)
    return grad_logits


def log_survival_forward(logits: Tensor, cu_steps: Tensor) -> Tensor:
    return reference.log_survival_padded(logits, cu_steps)


def log_survival_backward(grad_log_survival: Tensor, logits: Tensor, cu_steps: Tensor) -> Tensor:
    return _vjp(lambda x: reference.log_survival_padded(x, cu_steps), logits, grad_log_survival)


def crm_loss_forward(logits, cu_steps, outcome, first_error, w_survive, w_wrong, w_first_error, normalizer=None):
    weights = (w_survive, w_wrong, w_first_error)
    padded, mask = reference.pad(logits, cu_steps)  # once, for both results
    losses = reference.crm_loss_from_padded(padded, mask, outcome, first_error, weights, reduction="none")
    log_survival = reference.log_survival_from_padded(padded, mask)  # [B, longest], constant past each end
    log_survival_total = log_survival[:, -1] if log_survival.shape[1] else losses.new_zeros(losses.shape)
    return reduce_by(losses, normalizer), log_survival_total


def crm_loss_backward(grad_losses, logits, cu_steps, outcome, first_error, log_survival_total, w_survive, w_wrong,
                      w_first_error):  # fmt: skip
    weights = (w_survive, w_wrong, w_first_error)
    return _vjp(
        lambda x: reference.crm_loss_padded(x, cu_steps, outcome, first_error, weights, reduction="none"),
        logits, grad_losses,
    )  # fmt: skip


# ---- the baseline objectives (SPEC 7) ----------------------------------------------------------


def prm_loss_forward(logits, step_labels, normalizer=None):
    return reduce_by(reference.prm_loss_reference(logits, step_labels, reduction="none"), normalizer)


def prm_loss_backward(grad_losses, logits, step_labels):
    return _vjp(lambda x: reference.prm_loss_reference(x, step_labels, reduction="none"), logits, grad_losses)


def orm_loss_forward(logits, cu_steps, outcome, normalizer=None):
    return reduce_by(reference.orm_loss_reference(logits, cu_steps, outcome, reduction="none"), normalizer)


def orm_loss_backward(grad_losses, logits, cu_steps, outcome):
    return _vjp(lambda x: reference.orm_loss_reference(x, cu_steps, outcome, reduction="none"), logits, grad_losses)


def pqm_loss_forward(logits, cu_steps, first_error, margin, normalizer=None):
    return reduce_by(reference.pqm_loss_padded(logits, cu_steps, first_error, margin, reduction="none"), normalizer)


def pqm_loss_backward(grad_losses, logits, cu_steps, first_error, margin):
    return _vjp(
        lambda x: reference.pqm_loss_padded(x, cu_steps, first_error, margin, reduction="none"), logits, grad_losses
    )
