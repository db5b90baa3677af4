"""OpenRLHF: a remote reward function and a per-token reward builder.

OpenRLHF loads a reward function from a Python file (`--remote_rm_url /path/to/file.py`) and
calls `reward_func(queries, prompts, labels, **kwargs)`; `python/openrlhf_crm_reward.py` is
such a file, built with `make_reward_func`. With per-step rewards wanted in PPO, replace the
outcome reward OpenRLHF places at the EOS token (`compute_reward`) with `compute_process_reward`
on `CRMScorer.score_tokens`' step rewards.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .scorer import SCORE_KINDS, CRMScorer


def make_reward_func(scorer: CRMScorer, score: str = "log_survival"):
    """A function with OpenRLHF's reward_func shape: queries are prompt + response texts.

    Returns {"rewards": [B] the trajectory score (see SCORE_KINDS), "scores": [B] S(T) in [0, 1]
    (what OpenRLHF's dynamic filtering reads), "extra_logs": {"crm_num_steps", "crm_log_survival"}}.
    """
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")

    def reward_func(queries: Sequence[str], prompts: Sequence[str], labels=None, **kwargs) -> dict:
        if len(queries) != len(prompts):
            raise ValueError(f"{len(queries)} queries for {len(prompts)} prompts")
        responses = []
        for index, (query, prompt) in enumerate(zip(queries, prompts)):
            if not query.startswith(prompt):
                raise ValueError(f"queries[{index}] does not start with prompts[{index}]: OpenRLHF's query is "
                                 "the prompt followed by the response")  # fmt: skip
            responses.append(query[len(prompt):])
        scored = scorer.score_responses(prompts, responses)
        return {
            "rewards": scored.score(score).cpu(),
            "scores": scored.log_survival.exp().cpu(),
            "extra_logs": {"crm_num_steps": scored.num_steps.float().cpu(), "crm_log_survival": scored.log_survival.cpu()},
        }

    reward_func.__name__ = f"crm_{score}"
    return reward_func


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
