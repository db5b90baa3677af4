"""Segmented primitives over packed ragged data, shared by `scoring`, `rl` and `modeling`.

A packed batch is `values` [N] cut into B segments by `offsets` [B + 1] (SPEC 2): segment i owns
values[offsets[i]:offsets[i + 1]]. The offsets are `cu_steps` when segments are trajectories and
`cu_groups` when they are the samples drawn for one prompt.

Every function here is vectorized over the whole batch (no Python loop over segments), runs on any
device, needs no host sync and traces under torch.compile. Results are float32 (float64 for float64
input); sums add in float64 so that long segments do not drift. They are deterministic
(`torch.segment_reduce` reduces each segment in order).
Empty segments get the `empty` value the caller names, since no single default suits every use.

Arguments are checked for rank, dtype and device; the offsets' values are checked (one sync)
unless validate=False.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backends
from ._validate import check_positive, check_same_shape, check_segments
from ._numerics import accumulate_dtype


def lengths(offsets: Tensor) -> Tensor:
    return offsets[1:] - offsets[:-1]


def segment_ids(offsets: Tensor, num_values: int) -> Tensor:
    """[N] int64: the segment each value belongs to."""
    batch = offsets.numel() - 1
    owners = torch.arange(batch, device=offsets.device)
    return torch.repeat_interleave(owners, lengths(offsets), output_size=num_values)


def _float(values: Tensor) -> Tensor:
    return values.to(accumulate_dtype(values.dtype)) if values.is_floating_point() else values.float()


def _reduce(values: Tensor, offsets: Tensor, how: str, empty: float) -> Tensor:
    values = _float(values)
    if how == "sum":
        in_one_pass = _backends.segment_sum(values, offsets)
        if in_one_pass is not None:
            return in_one_pass
    if how in ("sum", "mean") and values.dtype != torch.float64:
        # segment_reduce adds each segment in order: in float32 a segment of 1M values drifts by
        # ~1%. Adding in float64 keeps the float32 result correctly rounded at the same bandwidth.
        return _reduce(values.double(), offsets, how, empty).to(values.dtype)
    reduced = torch.segment_reduce(values, how, offsets=offsets, unsafe=True)
    # segment_reduce's own `initial` would take part in every segment's min/max; set empties apart.
    return torch.where(lengths(offsets) > 0, reduced, torch.full_like(reduced, empty))


def segment_sum(values: Tensor, offsets: Tensor, *, validate: bool = True) -> Tensor:
    """[B] sum of each segment (0 for an empty one)."""
    check_segments(values, offsets, validate)
    return _reduce(values, offsets, "sum", 0.0)


def segment_mean(values: Tensor, offsets: Tensor, *, empty: float = float("nan"), validate: bool = True) -> Tensor:
    check_segments(values, offsets, validate)
    return _reduce(values, offsets, "mean", empty)


def segment_min(values: Tensor, offsets: Tensor, *, empty: float = float("inf"), validate: bool = True) -> Tensor:
    """[B] minimum of each segment; NaN in a segment makes its minimum NaN."""
    check_segments(values, offsets, validate)
    return _reduce(values, offsets, "min", empty)


def segment_max(values: Tensor, offsets: Tensor, *, empty: float = float("-inf"), validate: bool = True) -> Tensor:
    check_segments(values, offsets, validate)
    return _reduce(values, offsets, "max", empty)


def _at(values: Tensor, offsets: Tensor, index: Tensor, empty: float) -> Tensor:
    """values[index] per segment, `empty` where the segment has no values (index is then clamped
    into range so that the gather itself never reads out of bounds)."""
    values = _float(values)
    has_values = lengths(offsets) > 0
    safe_index = index.clamp(0, max(values.numel() - 1, 0))
    taken = values[safe_index] if values.numel() else torch.zeros_like(safe_index, dtype=values.dtype)
    return torch.where(has_values, taken, torch.full_like(taken, empty))


def segment_first(values: Tensor, offsets: Tensor, *, empty: float = float("nan"), validate: bool = True) -> Tensor:
    check_segments(values, offsets, validate)
    return _at(values, offsets, offsets[:-1].long(), empty)


def segment_last(values: Tensor, offsets: Tensor, *, empty: float = float("nan"), validate: bool = True) -> Tensor:
    check_segments(values, offsets, validate)
    return _at(values, offsets, offsets[1:].long() - 1, empty)


def segment_argmax(values: Tensor, offsets: Tensor, *, validate: bool = True) -> Tensor:
    """[B] int64 index into `values` of each segment's largest value, -1 for an empty segment.

    Ties go to the first (lowest index), and NaN ranks below every number, so the choice is
    deterministic and a NaN score is never picked over a real one.
    """
    check_segments(values, offsets, validate)
    values = _float(values)
    ranked = torch.where(values.isnan(), torch.full_like(values, float("-inf")), values)
    best = _reduce(ranked, offsets, "max", float("-inf"))
    owners = segment_ids(offsets, values.numel())
    positions = torch.arange(values.numel(), device=values.device)
    never = values.numel()
    candidates = torch.where(ranked == best[owners], positions, never)
    first_best = torch.full_like(best, never, dtype=torch.int64).scatter_reduce(
        0, owners, candidates, "amin", include_self=True
    )
    return torch.where(lengths(offsets) > 0, first_best, -1)


def segment_count(offsets: Tensor) -> Tensor:
    """[B] int64 number of values in each segment."""
    return lengths(offsets).long()


def segment_logsumexp(values: Tensor, offsets: Tensor, *, validate: bool = True) -> Tensor:
    """[B] log sum exp of each segment, shifted by its maximum; -inf for an empty one."""
    check_segments(values, offsets, validate)
    values = _float(values)
    peak = _reduce(values, offsets, "max", 0.0)
    peak = torch.where(peak.isfinite(), peak, torch.zeros_like(peak))
    owners = segment_ids(offsets, values.numel())
    total = _reduce(torch.exp(values - peak[owners]), offsets, "sum", 0.0)
    return torch.log(total) + peak


def segment_softmin(values: Tensor, offsets: Tensor, temperature: float, *, validate: bool = True) -> Tensor:
    """[B] smooth minimum -T log sum exp(-x / T): the minimum as T -> 0; +inf for an empty segment."""
    check_positive(temperature, "temperature")
    return -temperature * segment_logsumexp(_float(values) / -temperature, offsets, validate=validate)


def segment_softmax(values: Tensor, offsets: Tensor, *, validate: bool = True) -> Tensor:
    """[N] softmax of each value within its segment."""
    check_segments(values, offsets, validate)
    values = _float(values)
    owners = segment_ids(offsets, values.numel())
    return torch.exp(values - segment_logsumexp(values, offsets, validate=False)[owners])


# ---------------------------------------------------------------------------------------------
# Scans. With no gradient wanted they run in one pass where the registry (_backends.linear_scan,
# reverse_cummin) has a kernel for the tensors: on CPU tensors csrc/cpu/scan.cpp (one thread per
# segment, sums carried in float64), the linear ones on GPUs Triton (crm_kernels/_triton/scan.py).
# Otherwise (gradients, the running minimum on GPUs, the Triton scan under torch.compile) each
# is a doubling (Hillis-Steele) scan: in pass k every value combines with the one 2^k places
# before it (after it, for reverse scans) when that one is in the same segment. Work is
# N log2(longest segment) with no Python loop over segments or values; additions happen in a
# balanced tree within each segment, so a float32 scan over a long segment is as accurate as a
# pairwise sum and never a difference of two large prefix sums (which cancels). The number of
# passes needs the longest segment: one host sync (a graph break under torch.compile).


def _scan(values: Tensor, offsets: Tensor, combine, reverse: bool) -> Tensor:
    count = values.numel()
    result = _float(values).clone()
    if count == 0:
        return result
    owners = segment_ids(offsets, count)
    position = torch.arange(count, device=values.device)
    if reverse:
        room = offsets[1:].long()[owners] - 1 - position  # values after this one in its segment
    else:
        room = position - offsets[:-1].long()[owners]
    longest = int(lengths(offsets).max())
    shift = 1
    while shift < longest:
        partner = (position + shift if reverse else position - shift).clamp(0, count - 1)
        result = torch.where(room >= shift, combine(result, result[partner], shift), result)
        shift *= 2
    return result


def _linear_scan(values: Tensor, offsets: Tensor, decay: float, reverse: bool) -> Tensor:
    """y_t = x_t + decay * y_{t -/+ 1} within each segment: the one-pass kernel the registry picks
    for these tensors, else the doubling scan (which also serves gradients and tracing)."""
    scanned = _backends.linear_scan(_float(values), offsets, decay, reverse)
    if scanned is not None:
        return scanned
    return _scan(values, offsets, lambda own, other, shift: own + decay**shift * other, reverse=reverse)


def segment_cumsum(values: Tensor, offsets: Tensor, *, validate: bool = True) -> Tensor:
    """[N] inclusive sum within each segment: y_t = sum_{k <= t} x_k."""
    check_segments(values, offsets, validate)
    return _linear_scan(values, offsets, 1.0, reverse=False)


def segment_reverse_discounted_sum(values: Tensor, offsets: Tensor, gamma: float = 1.0, *,
                                   validate: bool = True) -> Tensor:  # fmt: skip
    """[N] y_t = sum_{k >= t} gamma^(k - t) x_k within each segment (returns-to-go)."""
    check_segments(values, offsets, validate)
    return _linear_scan(values, offsets, float(gamma), reverse=True)


def segment_reverse_cummin(values: Tensor, offsets: Tensor, *, validate: bool = True) -> Tensor:
    """[N] y_t = min_{k >= t} x_k within each segment (NaN propagates)."""
    check_segments(values, offsets, validate)
    scanned = _backends.reverse_cummin(_float(values), offsets)
    if scanned is not None:
        return scanned
    return _scan(values, offsets, lambda own, other, shift: torch.minimum(own, other), reverse=True)


def segment_gae(rewards: Tensor, values: Tensor, offsets: Tensor, gamma: float = 1.0, lam: float = 1.0, *,
                validate: bool = True) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Generalized advantage estimation within each segment (a trajectory ends at its segment's end:
    the value after its last step is 0).

    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = sum_{k >= t} (gamma lam)^(k - t) delta_k;  R_t = A_t + V_t.
    Returns (advantages, returns), [N] each.
    """
    check_segments(rewards, offsets, validate, values_name="rewards")
    check_same_shape(values, "values", rewards, "rewards")
    rewards, values = _float(rewards), _float(values).to(_float(rewards).dtype)
    count = values.numel()
    position = torch.arange(count, device=values.device)
    last = offsets[1:].long()[segment_ids(offsets, count)] - 1
    next_values = torch.where(position < last, values[(position + 1).clamp(max=max(count - 1, 0))], 0.0)
    deltas = rewards + float(gamma) * next_values - values
    advantages = segment_reverse_discounted_sum(deltas, offsets, float(gamma) * float(lam), validate=False)
    return advantages, advantages + values
