"""CRM rewards where RL trainers want them (SPEC 6).

Step rewards r_t = log(1 - h_t) are potential-based shaping: they sum to the outcome score
log S(T), and the return-to-go G_t = log S(T) - log S(t - 1). Trainers hold token-level [B, L]
tensors with a response mask (verl's `token_level_scores`, OpenRLHF's per-token rewards); this
module moves between that layout and the packed one and offers the credit-assignment variants of
the literature, each one vectorized call over the batch:

- `step_rewards`, `returns_to_go`, `gae`;
- `to_token_level` / `from_token_level` (a step's value at its last token), `to_token_spans`
  (on all of its tokens);
- `min_form`: PURE's min-form credit assignment (strict or soft);
- `group_advantages`: GRPO, Dr. GRPO and RLOO baselines over prompt groups (`cu_groups`);
- `outcome_conditioned_centering`: PROGRS.

All accumulate in float32 (float64 for float64 input) and need no Python loop over samples or
tokens; the segmented primitives live in `crm_kernels.segment`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backends
from ._numerics import softplus
from ._validate import (
    check_choice,
    check_count,
    check_cu_steps,
    check_discount,
    check_logits,
    check_out,
    check_positive,
    check_same_shape,
    check_segments,
    check_step_token_index,
)
from .segment import (
    _float,
    lengths,
    segment_gae,
    segment_ids,
    segment_mean,
    segment_reverse_cummin,
    segment_reverse_discounted_sum,
    segment_softmax,
    segment_sum,
)

GROUP_METHODS = ("grpo", "dr_grpo", "rloo")


def step_rewards(logits: Tensor, cu_steps: Tensor, *, validate: bool = True) -> tuple[Tensor, Tensor]:
    """r_t = log(1 - sigmoid(x_t)) = -softplus(x_t) [N] and the outcome score log S(T) [B]
    (their sum per trajectory). Not differentiated: rewards are data to the policy update."""
    check_logits(logits)
    check_cu_steps(cu_steps, logits)
    with torch.no_grad():
        rewards = -softplus(_float(logits))
        return rewards, segment_sum(rewards, cu_steps, validate=validate)


def returns_to_go(step_rewards: Tensor, cu_steps: Tensor, gamma: float = 1.0, *, validate: bool = True) -> Tensor:
    """G_t = sum_{k >= t} gamma^(k - t) r_k within each trajectory (log S(T) - log S(t - 1) at gamma 1)."""
    check_discount(gamma, "gamma")
    return segment_reverse_discounted_sum(step_rewards, cu_steps, gamma, validate=validate)


# ---------------------------------------------------------------------------------------------
# Token-level layout


def to_token_level(step_values: Tensor, cu_steps: Tensor, step_token_index: Tensor, seq_len: int, *,
                   validate: bool = True, out: Tensor | None = None) -> Tensor:  # fmt: skip
    """[B, seq_len] with each step's value at the token that ends it (column step_token_index),
    zero elsewhere. Steps of one row ending at the same token add up.

    out: an optional contiguous [B, seq_len] tensor of the result's dtype (float32, float64 for
    float64 values) and device to write into and return, as in `gae`: on CPU a fresh result costs
    the kernel zeroing its pages, most of this call on [65,536, 288]. Not differentiable."""
    batch = check_segments(step_values, cu_steps, validate, values_name="step_values", offsets_name="cu_steps")
    check_count(seq_len, "seq_len")
    if validate:
        check_step_token_index(step_token_index, step_values, seq_len)
    values = _float(step_values)
    if out is None:
        in_one_pass = _backends.segment_to_rows(values, cu_steps, step_token_index, seq_len)
        return in_one_pass if in_one_pass is not None else _token_level(values, cu_steps, step_token_index, seq_len)
    inputs = {"step_values": step_values, "cu_steps": cu_steps, "step_token_index": step_token_index}
    check_out({"out": out}, (batch, seq_len), values.dtype, values.device, inputs)
    if torch.is_grad_enabled() and values.requires_grad:
        raise ValueError("rl.to_token_level: out= is not differentiable, and step_values requires a gradient")
    if not _backends.segment_to_rows_out(values, cu_steps, step_token_index, out):
        out.copy_(_token_level(values, cu_steps, step_token_index, seq_len))
    return out


def _token_level(values: Tensor, cu_steps: Tensor, step_token_index: Tensor, seq_len: int) -> Tensor:
    """to_token_level with torch ops (any device, differentiable)."""
    rows = segment_ids(cu_steps, values.numel())
    token_level = torch.zeros(cu_steps.numel() - 1, seq_len, dtype=values.dtype, device=values.device)
    return token_level.index_put_((rows, step_token_index.long()), values, accumulate=True)


def from_token_level(token_values: Tensor, cu_steps: Tensor, step_token_index: Tensor, *,
                     validate: bool = True) -> Tensor:  # fmt: skip
    """[N] the values at each step's end token: the inverse gather of `to_token_level`."""
    if not isinstance(token_values, Tensor) or token_values.dim() != 2:
        raise ValueError("token_values must be a [B, L] tensor")
    if validate:
        check_segments(step_token_index, cu_steps, True, values_name="step_token_index", offsets_name="cu_steps")
        if token_values.shape[0] != cu_steps.numel() - 1:
            raise ValueError(f"token_values has {token_values.shape[0]} rows for {cu_steps.numel() - 1} trajectories")
        check_step_token_index(step_token_index, step_token_index, token_values.shape[1])
    rows = segment_ids(cu_steps, step_token_index.numel())
    return token_values[rows, step_token_index.long()]


def to_token_spans(step_values: Tensor, cu_steps: Tensor, step_token_index: Tensor, seq_len: int, *,
                   validate: bool = True) -> Tensor:  # fmt: skip
    """[B, seq_len] with each step's value on every token of the step: the tokens after the
    previous step's end up to its own end (step_token_index). Tokens after a row's last step get
    0. Step ends must increase within a row. How returns computed per step reach the tokens."""
    batch = check_segments(step_values, cu_steps, validate, values_name="step_values", offsets_name="cu_steps")
    if validate:
        check_step_token_index(step_token_index, step_values, seq_len)
        rows = segment_ids(cu_steps, step_values.numel())
        same_row = rows[1:] == rows[:-1]
        if bool((same_row & (step_token_index[1:] <= step_token_index[:-1])).any()):
            raise ValueError("step_token_index must increase within each trajectory")
    values = _float(step_values)
    ends = to_token_level(torch.ones_like(values), cu_steps, step_token_index, seq_len, validate=False) > 0
    # A token belongs to the step numbered by how many step ends come strictly before it.
    step_in_row = ends.long().cumsum(1) - ends.long()
    inside = step_in_row < lengths(cu_steps)[:, None]
    if values.numel() == 0:
        return torch.zeros(batch, seq_len, dtype=values.dtype, device=values.device)
    step = (cu_steps[:-1, None].long() + step_in_row).clamp(max=values.numel() - 1)
    return torch.where(inside, values[step], 0.0)


def packed_from_padded(token_values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """[B, L] values with a [B, L] mask -> the masked values packed [N] and their [B + 1] offsets."""
    mask = check_same_shape(mask, "mask", token_values, "token_values").bool()
    offsets = torch.zeros(mask.shape[0] + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(mask.sum(1), 0, out=offsets[1:])
    return token_values[mask], offsets


def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0, *,
        out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """GAE in the trainers' [B, L] layout (verl's `compute_gae_advantage_return`): the masked tokens
    of a row form its trajectory, masked-out tokens are skipped and get 0. Returns (advantages,
    returns), [B, L] each, float32 (float64 for float64 rewards).

    out: optional (advantages, returns) to write into and return: contiguous, of the results' shape,
    dtype and device. A trainer that keeps them across steps skips allocating them; on CPU that is
    the kernel zeroing fresh pages, about 40% of a call on [65,536, 288] (README, "Speed against the
    loops trainers run"). Writing into them is not differentiable."""
    check_discount(gamma, "gamma")
    check_discount(lam, "lam")
    if not isinstance(token_rewards, Tensor) or token_rewards.dim() != 2:
        got = tuple(token_rewards.shape) if isinstance(token_rewards, Tensor) else type(token_rewards).__name__
        raise ValueError(f"token_rewards must be a [B, L] tensor, got {got}")
    check_same_shape(values, "values", token_rewards, "token_rewards")
    check_same_shape(mask, "mask", token_rewards, "token_rewards")
    rewards = _float(token_rewards)
    if out is None:
        in_one_pass = _backends.masked_gae(rewards, values, mask, float(gamma), float(lam))
        return in_one_pass if in_one_pass is not None else _gae(rewards, values, mask, gamma, lam)
    inputs = {"token_rewards": token_rewards, "values": values, "mask": mask}
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError(f"out must be a pair of tensors (advantages, returns), got {type(out).__name__}")
    advantages, returns = out
    check_out({"out's advantages": advantages, "out's returns": returns}, rewards.shape, rewards.dtype,
              rewards.device, inputs)  # fmt: skip
    if torch.is_grad_enabled() and (rewards.requires_grad or values.requires_grad):
        raise ValueError("rl.gae: out= is not differentiable, and token_rewards or values requires a gradient")
    if not _backends.masked_gae_out(rewards, values, mask, float(gamma), float(lam), advantages, returns):
        computed_advantages, computed_returns = _gae(rewards, values, mask, gamma, lam)
        advantages.copy_(computed_advantages)
        returns.copy_(computed_returns)
    return advantages, returns


def _gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE with torch ops (any device, differentiable): rows whose mask is a prefix scan as whole
    rows, others are packed first."""
    if _is_prefix_mask(mask):
        return _gae_right_padded(rewards, _float(values), mask.bool(), gamma, lam)
    packed_rewards, offsets = packed_from_padded(rewards, mask)
    packed_values, _ = packed_from_padded(values, mask)
    advantages, returns = segment_gae(packed_rewards, packed_values, offsets, gamma, lam, validate=False)
    mask = mask.bool()
    out_advantages = torch.zeros(mask.shape, dtype=advantages.dtype, device=mask.device)
    out_returns = torch.zeros_like(out_advantages)
    out_advantages[mask] = advantages
    out_returns[mask] = returns
    return out_advantages, out_returns


def _is_prefix_mask(mask: Tensor) -> bool:
    """Whether every row's mask is ones then zeros (a right-padded response): one host sync."""
    mask = mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all()) if mask.shape[1] > 1 else True


def _gae_right_padded(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float):
    """GAE when each row's trajectory is a prefix: the zeros after it add nothing, so the reverse
    discounted sum runs on whole rows, each row one segment of segment's linear scan."""
    # torch.where, not a product with the mask: whatever sits under a masked-out token (NaN, inf)
    # must not reach a result, and NaN * 0 is NaN.
    next_values = torch.zeros_like(values)
    next_values[:, :-1] = values.where(mask, 0.0)[:, 1:]
    advantages = (rewards + gamma * next_values - values).where(mask, 0.0)
    rows, length = advantages.shape
    row_offsets = torch.arange(rows + 1, device=advantages.device) * length
    scanned = segment_reverse_discounted_sum(advantages.reshape(-1), row_offsets, float(gamma) * float(lam),
                                             validate=False)  # fmt: skip
    advantages = scanned.view(rows, length)
    return advantages, (advantages + values).where(mask, 0.0)


# ---------------------------------------------------------------------------------------------
# Credit assignment


def min_form(step_rewards: Tensor, cu_steps: Tensor, temperature: float | None = None, *,
             validate: bool = True) -> Tensor:  # fmt: skip
    """PURE's min-form credit assignment over step positions: [N] returns.

    strict (temperature None): G_t = min_{k >= t} r_k, the reverse running minimum.
    soft: each reward is weighted by w_t = softmax(-r / temperature) over its trajectory and
    G_t = sum_{k >= t} w_k r_k, which tends to the strict minimum's total as temperature -> 0.
    Steps only: the zero-filled tokens between steps of the token layout never enter the minimum.
    """
    check_segments(step_rewards, cu_steps, validate, values_name="step_rewards", offsets_name="cu_steps")
    if temperature is None:
        return segment_reverse_cummin(step_rewards, cu_steps, validate=False)
    check_positive(temperature, "temperature (None for the strict form)")
    rewards = _float(step_rewards)
    weights = segment_softmax(-rewards / float(temperature), cu_steps, validate=False)
    return segment_reverse_discounted_sum(weights * rewards, cu_steps, 1.0, validate=False)


def group_advantages(scores: Tensor, cu_groups: Tensor, method: str = "grpo", eps: float = 1e-6, *,
                     validate: bool = True) -> Tensor:  # fmt: skip
    """[B] advantage of each sample against its prompt group (groups packed by cu_groups).

    grpo: (s - mean) / (std + eps), std unbiased (torch.std), and 1 for a group of one.
    dr_grpo: s - mean (no division by std).
    rloo: s - mean of the other samples of the group = n / (n - 1) (s - mean); 0 for a group of one.
    The variance is computed from centred values in a second pass: the one-pass E[s^2] - E[s]^2
    cancels for groups whose scores are close (e.g. log S(T) near 0), shrinking the advantages.
    """
    check_choice(method, "method", GROUP_METHODS)
    check_segments(scores, cu_groups, validate, values_name="scores", offsets_name="cu_groups")
    scores = _float(scores)
    owners = segment_ids(cu_groups, scores.numel())
    centred = scores - segment_mean(scores, cu_groups, empty=0.0, validate=False)[owners]
    size = lengths(cu_groups).to(scores.dtype)[owners]
    if method == "dr_grpo":
        return centred
    if method == "rloo":
        return torch.where(size > 1, centred * size / (size - 1).clamp(min=1), 0.0)
    variance = segment_sum(centred * centred, cu_groups, validate=False)[owners] / (size - 1).clamp(min=1)
    std = torch.where(size > 1, variance.sqrt(), 1.0)
    return centred / (std + eps)


def outcome_conditioned_centering(process_scores: Tensor, cu_groups: Tensor, outcome: Tensor, *,
                                  validate: bool = True) -> Tensor:  # fmt: skip
    """PROGRS: within each group, the process scores of incorrect trajectories (outcome 0) are
    shifted to zero mean over the group's incorrect ones; correct trajectories are untouched."""
    check_segments(process_scores, cu_groups, validate, values_name="process_scores", offsets_name="cu_groups")
    check_same_shape(outcome, "outcome", process_scores, "process_scores")
    scores = _float(process_scores)
    wrong = ~outcome.bool()
    owners = segment_ids(cu_groups, scores.numel())
    wrong_sum = segment_sum(torch.where(wrong, scores, 0.0), cu_groups, validate=False)
    wrong_count = segment_sum(wrong.to(scores.dtype), cu_groups, validate=False)
    wrong_mean = wrong_sum / wrong_count.clamp(min=1)
    return torch.where(wrong, scores - wrong_mean[owners], scores)
