"""OpenRLHF (0.11.2): a reward function for its agent executor and a per-token reward builder.

OpenRLHF's `SingleTurnAgentExecutor` loads a reward function from a Python file
(`--reward.remote_url /path/to/file.py`) and calls `reward_func(queries, prompts, labels)` with
each query decoded from the prompt and response tokens with `skip_special_tokens=False`;
`python/openrlhf_crm_reward.py` is such a file, built with `make_reward_func`, which drops the
policy's special-token texts (an EOS) before the CRM reads the steps. With per-step rewards wanted
in PPO, build them in OpenRLHF's experience layout with `action_token_rewards` and use
`compute_process_reward` in place of its `compute_reward`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .rollouts import SCORE_KINDS, CRMScorer, token_rewards


def make_reward_func(scorer: CRMScorer, score: str = "log_survival", special_tokens: Sequence[str] = ()):
    """A function with OpenRLHF's reward_func shape: queries are prompt + response texts.

    special_tokens: the policy tokenizer's special-token texts (`tokenizer.all_special_tokens`),
        removed from each response: OpenRLHF decodes queries with skip_special_tokens=False, so
        the EOS would otherwise be read as part of the last step.
    Returns {"rewards": [B] the trajectory score (see SCORE_KINDS), "scores": [B] S(T) in [0, 1]
    (what OpenRLHF's dynamic filtering reads), "extra_logs": {"crm_num_steps", "crm_log_survival"}}.
    """
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
    if isinstance(special_tokens, str) or not all(isinstance(token, str) and token for token in special_tokens):
        raise TypeError(f"special_tokens must be a sequence of non-empty strings, got {special_tokens!r}")
    # Longest first, so that a token containing another is removed whole.
    special_tokens = sorted(set(special_tokens), key=len, reverse=True)

    def reward_func(queries: Sequence[str], prompts: Sequence[str], labels=None, **kwargs) -> dict:
        if len(queries) != len(prompts):
            raise ValueError(f"{len(queries)} queries for {len(prompts)} prompts")
        responses = []
        for index, (query, prompt) in enumerate(zip(queries, prompts)):
            if not query.startswith(prompt):
                raise ValueError(f"queries[{index}] does not start with prompts[{index}]: OpenRLHF's query is "
                                 "the prompt followed by the response")  # fmt: skip
            response = query[len(prompt):]
            for token in special_tokens:
                response = response.replace(token, "")
            responses.append(response)
        scored = scorer.score_responses(prompts, responses)
        return {
            "rewards": scored.score(score).cpu(),
            "scores": scored.log_survival_total.exp().cpu(),
            "extra_logs": {"crm_num_steps": scored.num_steps.float().cpu(), "crm_log_survival": scored.log_survival_total.cpu()},
        }

    reward_func.__name__ = f"crm_{score}"
    return reward_func


def action_token_rewards(scorer: CRMScorer, prompts: Sequence[str], sequences: Tensor, action_mask: Tensor,
                         policy_tokenizer) -> Tensor:  # fmt: skip
    """CRM step rewards in OpenRLHF's experience layout, for `compute_process_reward`.

    sequences: [B, L] prompt then response token ids, as OpenRLHF's executor stitches them;
    action_mask: [B, L - 1], OpenRLHF's (entry t is 1 when token t + 1 is a response token).
    Returns [B, L - 1]: r_k at the action entry of the token that ends step k, 0 elsewhere, so a
    row sums to log S(T). The k-th action entry of a row is the k-th response token, whatever
    the prompt length (the response does not start at column 0)."""
    if sequences.dim() != 2 or action_mask.shape != (sequences.shape[0], sequences.shape[1] - 1):
        raise ValueError(f"action_mask must be [B, L - 1] for sequences [B, L], got {tuple(action_mask.shape)} "
                         f"for {tuple(sequences.shape)}")  # fmt: skip
    mask = action_mask.bool()
    lengths = mask.sum(1)
    width = int(lengths.max()) if mask.numel() else 0
    response_mask = torch.arange(width, device=mask.device) < lengths[:, None]
    response_ids = torch.full((mask.shape[0], width), policy_tokenizer.pad_token_id or 0, dtype=sequences.dtype,
                              device=sequences.device)  # fmt: skip
    response_ids[response_mask] = sequences[:, 1:][mask]
    scored, step_token_index = scorer.score_tokens(list(prompts), response_ids, response_mask, policy_tokenizer)
    per_token = token_rewards(scored, step_token_index, width).to(response_ids.device)
    rewards = torch.zeros(mask.shape, dtype=per_token.dtype, device=mask.device)
    rewards[mask] = per_token[response_mask]
    return rewards


def compute_process_reward(token_rewards: Tensor, kl_coef: float, kl: Tensor, action_mask: Tensor,
                           reward_clip_range: tuple[float, float] | None = None) -> Tensor:  # fmt: skip
    """OpenRLHF's `compute_reward(r, kl_coef, kl, action_mask, reward_clip_range)` with the
    outcome reward r [B] at the EOS replaced by per-token rewards [B, L] (`scorer.token_rewards`):
    reward = clip(token_rewards) - kl_coef * kl on the action tokens, 0 elsewhere."""
    if token_rewards.shape != kl.shape or action_mask.shape != kl.shape:
        raise ValueError(f"token_rewards, kl and action_mask must share a [B, L] shape, got "
                         f"{tuple(token_rewards.shape)}, {tuple(kl.shape)}, {tuple(action_mask.shape)}")  # fmt: skip
    kl_coef = max(float(kl_coef), 0.0)
    if reward_clip_range is not None:
        token_rewards = token_rewards.clamp(*reward_clip_range)
    return torch.where(action_mask.bool(), token_rewards.to(kl.dtype) - kl_coef * kl, 0.0)
