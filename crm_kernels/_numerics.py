"""The numeric policy every backend follows (SPEC 4), in one place: the accumulation dtype, the
clamp of log S(T), the softplus form, and how per-trajectory losses are reduced. The kernels, the torch.library fakes
and the eager reference all take these from here; `crm_kernels.reference` is the oracle only."""

from __future__ import annotations

import torch

MAX_LOG_SURVIVAL = -1.17549435e-38  # float32's smallest normal (SPEC 4)
REDUCTIONS = ("mean", "sum", "none")


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scans and losses accumulate in float32, float64 for float64 logits (SPEC 4); every backend
    allocates its outputs with this."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) without F.softplus's switch to x above 20, which is off by e^-20 (2e-9), far
    more than float64 rounding."""
    return torch.logaddexp(x, torch.zeros_like(x))


# The ordered sum's block: blocks are summed left to right in float64, then the block sums left to
# right. Up to one block this is the plain left-to-right sum; past it, the blocks can be summed in
# parallel (prm_loss reduces a million steps) and the result still depends on the data alone, not
# on the number of threads. csrc/include/crm_ops.h follows the same rule.
SUM_BLOCK = 8192


def ordered_sum(losses: torch.Tensor) -> torch.Tensor:
    """The sum of a [n] vector by blocks of SUM_BLOCK, each left to right in float64 (a cumulative
    sum), then the block sums left to right; in the vector's own dtype."""
    if not losses.numel():
        return losses.sum()
    values = losses.to(torch.float64)
    if values.numel() > SUM_BLOCK:
        padding = -values.numel() % SUM_BLOCK  # trailing zeros leave each partial sum as it is
        blocks = torch.nn.functional.pad(values, (0, padding)).view(-1, SUM_BLOCK)
        values = blocks.cumsum(1)[:, -1]
    return values.cumsum(0)[-1].to(losses.dtype)


def reduce_by(losses: torch.Tensor, normalizer: float | None) -> torch.Tensor:
    """The kernels' reduction (csrc/include/crm_ops.h says the same in C++): the [B] losses when
    normalizer is None, else their ordered sum over `normalizer`."""
    return losses if normalizer is None else ordered_sum(losses) / normalizer


def reduce_losses(losses: torch.Tensor, reduction: str, normalizer=None) -> torch.Tensor:
    """"none": the [B] vector; "sum"; "mean": the sum over B, or over `normalizer` when given
    (data-parallel ranks pass the global count so that their sums add up to the global mean).

    The sum runs left to right in float64 (a cumulative sum; by blocks past SUM_BLOCK values), so it
    has the same bits for any number of threads: torch.sum splits a CPU reduction by thread, and its float32 result moved
    by a few ulps between 1 and 2 threads. A batch without trajectories has mean 0, not 0 / 0."""
    if reduction == "none":
        return losses  # whatever normalizer says: it only divides a reduced loss
    loss = reduce_by(losses, reduction_divisor(reduction, normalizer, losses.numel()))
    return loss / normalizer if isinstance(normalizer, torch.Tensor) else loss


def reduction_divisor(reduction: str, normalizer, batch: int) -> float | None:
    """What `reduce_by` divides the ordered sum by, for `reduce_losses`' rule: None for "none";
    1 for "sum" and where a tensor normalizer divides afterwards (its value is data, not a
    float the kernels can take); a float normalizer; else B for "mean" (1 for an empty batch)."""
    if reduction == "none":
        return None
    if normalizer is None:
        return 1.0 if reduction == "sum" else float(max(batch, 1))
    return 1.0 if isinstance(normalizer, torch.Tensor) else float(normalizer)


def empty_loss(log_survival_total: torch.Tensor, normalizer: float | None) -> torch.Tensor:
    """The fakes' loss output: a scalar when reduced (normalizer given), else [B] like log S(T)."""
    return log_survival_total.new_empty(() if normalizer is not None else log_survival_total.shape)
