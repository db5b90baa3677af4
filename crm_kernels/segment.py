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

from ._validate import check_offset_values, check_offsets
from .reference import accumulate_dtype


def check_segments(values, offsets, validate: bool = True, *, values_name="values", offsets_name="offsets") -> int:
    """Checks [N] values cut by [B + 1] offsets (SPEC 5 rules, names as given); returns B."""
    if not isinstance(values, Tensor):
        raise TypeError(f"{values_name} must be a torch.Tensor, got {type(values).__name__}")
    if values.dim() != 1:
        raise ValueError(f"{values_name} must be 1-D (packed), got shape {tuple(values.shape)}")
    batch = check_offsets(offsets, values, offsets_name, values_name)
    if validate:
        check_offset_values(offsets, offsets_name, values.numel(), f"len({values_name})")
    return batch


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
