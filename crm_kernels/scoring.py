"""Scores for choosing among sampled trajectories (SPEC 6): Best-of-N and beam search.

A CRM ranks a finished trajectory by its survival S(T) (equivalently log S(T), which does not
underflow on long trajectories) and a partial one by its prefix score log S(t). Other PRMs are
compared by aggregating per-step scores (min, last, mean, product); `aggregate` offers those over
any step scores, for a CRM `step_scores` = 1 - h(t).

Trajectories are packed by `cu_steps`; the candidates for one prompt are consecutive and packed by
`cu_groups` [G + 1]. Everything is vectorized over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from ._numerics import accumulate_dtype, softplus
from ._validate import check_choice, check_cu_steps, check_logits, check_probabilities, check_segments, check_step_scores
from .segment import (
    lengths,
    segment_argmax,
    segment_ids,
    segment_last,
    segment_mean,
    segment_min,
    segment_sum,
)

AGGREGATIONS = ("log_survival", "min", "last", "mean", "product")


def step_scores(hazard_logits: Tensor) -> Tensor:
    """1 - h(t) = sigmoid(-x_t): the probability that step t is right given the earlier ones are."""
    return torch.sigmoid(-hazard_logits.to(accumulate_dtype(hazard_logits.dtype)))


def aggregate(step_values: Tensor, cu_steps: Tensor, how: str, *, validate: bool = True) -> Tensor:
    """[B] trajectory scores from per-step values.

    how:
        "log_survival": step_values are hazard logits x_t; returns log S(T) (SPEC 1), the CRM's
            outcome score.
        "min", "last", "mean", "product": step_values are step scores in [0, 1] (`step_scores`
            for a CRM, or another PRM's step probabilities); the product is taken in log space.
    A trajectory without steps scores 1 (0 for log_survival): nothing in it failed. With
    validate, step scores outside [0, 1] are an error (hazard logits passed as scores gave NaN for
    "product" and meaningless numbers for the rest); NaN passes through to its trajectory.
    """
    check_choice(how, "how", AGGREGATIONS)
    if how == "log_survival":
        log_survival = ops.log_survival(step_values, cu_steps, validate=validate)
        return segment_last(log_survival, cu_steps, empty=0.0, validate=False)
    check_segments(step_values, cu_steps, validate, values_name="step_values", offsets_name="cu_steps")
    if validate:
        check_step_scores(step_values, how)
    if how == "min":
        return segment_min(step_values, cu_steps, empty=1.0, validate=False)
    if how == "last":
        return segment_last(step_values, cu_steps, empty=1.0, validate=False)
    if how == "mean":
        return segment_mean(step_values, cu_steps, empty=1.0, validate=False)
    return torch.exp(segment_sum(torch.log(step_values), cu_steps, validate=False))


def log_first_error_probability(hazard_logits: Tensor, cu_steps: Tensor, *, validate: bool = True) -> Tensor:
    """[N] log p(z = t) = log S(t - 1) + log h(t): the log-probability that step t is the first
    wrong one (SPEC 1). log S(t - 1) is read from the step before, not recovered as
    log S(t) - log(1 - h(t)), which cancels for confident hazards."""
    log_survival = ops.log_survival(hazard_logits, cu_steps, validate=validate)
    return _previous_step(log_survival, cu_steps, first=0.0) - softplus(-hazard_logits.to(log_survival.dtype))


def _previous_step(values: Tensor, cu_steps: Tensor, first: float) -> Tensor:
    """[N] each step's predecessor in its own trajectory; `first` for a trajectory's first step."""
    positions = torch.arange(values.numel(), device=values.device)
    starts = cu_steps[:-1].long()[segment_ids(cu_steps, values.numel())]
    return torch.where(positions > starts, values[(positions - 1).clamp(min=0)], first)


def most_likely_first_error(hazard_logits: Tensor, cu_steps: Tensor, *, validate: bool = True) -> Tensor:
    """[B] int64 argmax_t p(z = t) within each trajectory (0-based step), -1 for one without steps."""
    log_p = log_first_error_probability(hazard_logits, cu_steps, validate=validate)
    best = segment_argmax(log_p, cu_steps, validate=False)
    return torch.where(best >= 0, best - cu_steps[:-1].long(), -1)


def largest_drop(prefix_scores: Tensor, cu_steps: Tensor, *, validate: bool = True) -> Tensor:
    """[B] int64 0-based step at which each trajectory's prefix score falls most (from 1 before
    its first step), -1 for one without steps: where a verifier whose step scores are the
    probability that the prefix so far is right (a PRM's, an ORM's or a PQM's sigmoid) places the
    first wrong step. For a CRM, prefix_scores = S(t) gives `most_likely_first_error`, which
    computes it without cancellation."""
    check_segments(prefix_scores, cu_steps, validate, values_name="prefix_scores", offsets_name="cu_steps")
    if validate:
        check_probabilities(prefix_scores, "prefix_scores")
    values = prefix_scores.to(accumulate_dtype(prefix_scores.dtype))
    best = segment_argmax(_previous_step(values, cu_steps, first=1.0) - values, cu_steps, validate=False)
    return torch.where(best >= 0, best - cu_steps[:-1].long(), -1)


def best_of_n(scores: Tensor, cu_groups: Tensor, *, validate: bool = True) -> Tensor:
    """[G] int64 index (into scores) of the best candidate of each group, -1 for an empty group.
    Ties go to the earlier candidate; NaN ranks last."""
    check_segments(scores, cu_groups, validate, values_name="scores", offsets_name="cu_groups")
    return segment_argmax(scores, cu_groups, validate=False)


def top_k(scores: Tensor, cu_groups: Tensor, k: int, *, validate: bool = True) -> tuple[Tensor, Tensor]:
    """The k best candidates of each group (all of a smaller group), best first: for keeping
    k beams per prompt.

    Returns:
        kept: [M] int64 indices into scores, group by group.
        cu_kept: [G + 1] offsets of each group's kept candidates.
    """
    check_segments(scores, cu_groups, validate, values_name="scores", offsets_name="cu_groups")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    owners = segment_ids(cu_groups, scores.numel())
    ranked = scores.to(accumulate_dtype(scores.dtype)).nan_to_num(nan=float("-inf"))
    # Two stable sorts: by score descending, then by group, keep each group's best first and ties
    # in their original order.
    by_score = torch.sort(ranked, descending=True, stable=True).indices
    order = by_score[torch.sort(owners[by_score], stable=True).indices]
    rank_in_group = torch.arange(scores.numel(), device=scores.device) - cu_groups[owners].long()
    keep = rank_in_group < k
    kept_per_group = lengths(cu_groups).clamp(max=k)
    cu_kept = torch.zeros_like(cu_groups, dtype=torch.int64)
    torch.cumsum(kept_per_group, 0, out=cu_kept[1:])
    return order[keep], cu_kept


def extend_log_survival(prefix_log_survival: Tensor, new_hazard_logits: Tensor, cu_new_steps: Tensor, *,
                        validate: bool = True) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Beam search: add steps to K partial trajectories without rescoring their prefixes.

    log S(t) of a prefix grows by log(1 - h) = -softplus(x) per added step, so a beam's score after
    new steps is its previous log S plus the new steps' own segmented scan.

    Args:
        prefix_log_survival: [K] log S of each beam so far (0 for an empty beam).
        new_hazard_logits: [M] hazard logits of the steps added to the beams, packed.
        cu_new_steps: [K + 1] offsets: beam k gets new steps cu_new_steps[k]:cu_new_steps[k + 1].

    Returns:
        step_log_survival: [M] log S(t) at each new step, counted from the start of its beam.
        log_survival: [K] each beam's new score.
    """
    check_logits(new_hazard_logits)
    beams = check_cu_steps(cu_new_steps, new_hazard_logits)
    if not isinstance(prefix_log_survival, Tensor) or prefix_log_survival.shape != (beams,):
        shape = tuple(prefix_log_survival.shape) if isinstance(prefix_log_survival, Tensor) else None
        raise ValueError(f"prefix_log_survival must be [K] = [{beams}] (one per beam), got {shape}")
    added = ops.log_survival(new_hazard_logits, cu_new_steps, validate=validate)
    prefix = prefix_log_survival.to(added.dtype)
    step_log_survival = added + prefix[segment_ids(cu_new_steps, added.numel())]
    totals = segment_last(added, cu_new_steps, empty=0.0, validate=False) + prefix
    return step_log_survival, totals


