"""verl: a reward manager that puts CRM step rewards on the response tokens, and a min-form
advantage estimator.

verl imports this module in each of its processes when told to:

    export VERL_USE_EXTERNAL_MODULES=crm_kernels.integrations.verl
    python -m verl.trainer.main_ppo ... \\
        reward_model.reward_manager=crm \\
        +reward_model.reward_kwargs.crm_path=/path/to/crm \\
        algorithm.adv_estimator=grpo            # or crm_min_form

Importing it registers `CRMRewardManager` as reward manager "crm" and `min_form_advantage` as
advantage estimator "crm_min_form" when verl is installed; without verl it only defines them.

The reward manager's `reward_tensor` [B, L_resp] holds r_t = log(1 - h_t) at each step's last
token (SPEC 6), so verl's outcome estimators (GRPO, RLOO, REINFORCE++), which sum a row, train on
log S(T), and token-level estimators see the per-step credit. A verifier score (verl's
`compute_score`) can be added at the last token as in verl's naive manager.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from .. import rl
from .scorer import CRMScorer, token_rewards

REWARD_MANAGER_NAME = "crm"
ADVANTAGE_ESTIMATOR_NAME = "crm_min_form"


class CRMRewardManager:
    """verl reward manager (`verl.workers.reward_manager`'s constructor and call shapes).

    Args (verl passes the first four; the rest come from `reward_model.reward_kwargs`):
        tokenizer: the policy's tokenizer.
        num_examine: how many decoded responses to print per batch.
        compute_score: verl's rule-based scorer, or None for CRM rewards alone.
        reward_fn_key: the non-tensor field naming each sample's data source.
        crm_path: a directory saved by `ConditionalRewardModel.save_pretrained` (with tokenizer).
        scorer: a ready `CRMScorer` instead of crm_path.
        step_separator: what ends a step in the response text.
        outcome_weight: weight of compute_score's score, added at the last response token.
        device, batch_size: where and how many at a time the CRM runs.
    """

    def __init__(self, tokenizer, num_examine: int = 0, compute_score=None, reward_fn_key: str = "data_source", *,
                 crm_path: str | None = None, scorer: CRMScorer | None = None, step_separator: str = "\n\n",
                 outcome_weight: float = 1.0, device=None, batch_size: int = 32, **kwargs):  # fmt: skip
        if kwargs:
            raise TypeError(f"CRMRewardManager got unknown reward_kwargs {sorted(kwargs)}")
        if (crm_path is None) == (scorer is None):
            raise ValueError("CRMRewardManager needs exactly one of crm_path (reward_kwargs.crm_path) or scorer")
        if scorer is None:
            scorer = CRMScorer.from_pretrained(crm_path, step_separator, batch_size, device)
        self.tokenizer = tokenizer
        self.num_examine = num_examine
        self.compute_score = compute_score
        self.reward_fn_key = reward_fn_key
        self.scorer = scorer
        self.outcome_weight = float(outcome_weight)

    def __call__(self, data, return_dict: bool = False):
        """data: verl's DataProto with batch "prompts" [B, Lp] (left-padded), "responses"
        [B, L] (right-padded) and "attention_mask" [B, Lp + L]."""
        prompt_ids, response_ids = data.batch["prompts"], data.batch["responses"]
        prompt_length = prompt_ids.shape[1]
        attention_mask = data.batch["attention_mask"]
        prompt_mask, response_mask = attention_mask[:, :prompt_length], attention_mask[:, prompt_length:]
        prompts = self.tokenizer.batch_decode([ids[mask.bool()] for ids, mask in zip(prompt_ids, prompt_mask)],
                                              skip_special_tokens=True)  # fmt: skip
        scored, step_token_index = self.scorer.score_tokens(prompts, response_ids, response_mask, self.tokenizer)
        reward_tensor = token_rewards(scored, step_token_index, response_ids.shape[1]).to(response_ids.device)
        extra = defaultdict(list)
        extra["crm_log_survival"] = scored.log_survival.tolist()
        extra["crm_num_steps"] = scored.num_steps.tolist()
        if self.compute_score is not None:
            self._add_outcome_scores(data, prompts, response_ids, response_mask, reward_tensor, extra)
        for row in range(min(self.num_examine, len(prompts))):
            print(f"[crm] {prompts[row]!r}: {extra['crm_num_steps'][row]} steps, log S(T) = "
                  f"{extra['crm_log_survival'][row]:.4f}")  # fmt: skip
        if return_dict:
            return {"reward_tensor": reward_tensor, "reward_extra_info": dict(extra)}
        return reward_tensor

    def _add_outcome_scores(self, data, prompts, response_ids, response_mask, reward_tensor, extra) -> None:
        """verl's naive manager, vectorized where it can be: compute_score per sample (it parses
        text), added at each response's last token."""
        lengths = response_mask.sum(1)
        responses = self.tokenizer.batch_decode([ids[:n] for ids, n in zip(response_ids, lengths.tolist())],
                                                skip_special_tokens=True)  # fmt: skip
        non_tensor = data.non_tensor_batch
        outcome = []
        for row, response in enumerate(responses):
            result = self.compute_score(
                data_source=non_tensor[self.reward_fn_key][row],
                solution_str=response,
                ground_truth=non_tensor["reward_model"][row]["ground_truth"],
                extra_info=non_tensor.get("extra_info", [None] * len(responses))[row],
            )
            outcome.append(float(result["score"] if isinstance(result, dict) else result))
        rows = torch.nonzero(lengths > 0).squeeze(1)
        bonus = self.outcome_weight * torch.tensor(outcome, dtype=reward_tensor.dtype, device=reward_tensor.device)
        reward_tensor[rows, lengths[rows] - 1] += bonus[rows]
        extra["outcome_score"] = outcome


def min_form_advantage(token_level_rewards: Tensor, response_mask: Tensor, index=None, config=None,
                       **kwargs) -> tuple[Tensor, Tensor]:  # fmt: skip
    """verl advantage estimator: PURE's min-form credit assignment on CRM step rewards.

    The steps are the nonzero entries of token_level_rewards within response_mask (where
    `CRMRewardManager` put them). Each token's return is the minimum of the rewards of its step and
    every later one (`crm_kernels.rl.min_form`), or the soft form when `config.crm_temperature` is
    set; advantages = returns. A step whose reward is exactly 0 (h underflowed to 0) is not seen;
    the strict minimum is unchanged by that, since every reward is <= 0.
    """
    temperature = None if config is None else _config_get(config, "crm_temperature", None)
    mask = response_mask.bool()
    step_ends = (token_level_rewards != 0) & mask
    rewards, cu_steps = rl.packed_from_padded(token_level_rewards, step_ends)
    step_returns = rl.min_form(rewards, cu_steps, temperature, validate=False)
    step_token_index = step_ends.nonzero()[:, 1]
    returns = rl.to_token_spans(step_returns, cu_steps, step_token_index, mask.shape[1], validate=False) * mask
    return returns, returns


def _config_get(config, key: str, default):
    getter = getattr(config, "get", None)
    return getter(key, default) if callable(getter) else getattr(config, key, default)


def register() -> bool:
    """Registers the reward manager and the estimator with verl; False when verl is absent."""
    try:
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est
        from verl.workers.reward_manager import register as register_reward_manager
        from verl.workers.reward_manager.registry import REWARD_MANAGER_REGISTRY
    except ImportError:
        return False
    # verl refuses a second, different registration under one name; a re-import is not one.
    if REWARD_MANAGER_REGISTRY.get(REWARD_MANAGER_NAME) is not CRMRewardManager:
        register_reward_manager(REWARD_MANAGER_NAME)(CRMRewardManager)
    if ADV_ESTIMATOR_REGISTRY.get(ADVANTAGE_ESTIMATOR_NAME) is not min_form_advantage:
        register_adv_est(ADVANTAGE_ESTIMATOR_NAME)(min_form_advantage)
    return True


register()
