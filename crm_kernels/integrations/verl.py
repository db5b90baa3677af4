"""verl (0.9.1): a reward manager for verl's reward loop that scores each response with a CRM.

How verl 0.9.1 computes rewards (`verl/experimental/reward_loop`, `verl/trainer/ppo/reward.py`):
each reward-loop worker builds its manager with `load_reward_manager(config, tokenizer, ...)`,
that is `cls(config=, tokenizer=, compute_score=, reward_router_address=, reward_model_tokenizer=)`,
and awaits `run_single(data[i:i + 1])` for every response, which returns
`{"reward_score": float, "reward_extra_info": dict}`. verl writes each response's score at its last
token: the agent loop does it itself, the colocated path through `assemble_rm_scores`. One number
per response is all a reward manager hands verl, so this one hands:

- `score="log_survival"` (default): log S(T), the sum of the step rewards r_t = log(1 - h_t), which
  is what verl's outcome estimators (GRPO, RLOO, REINFORCE++) sum over a response anyway;
- `score="min_reward"`: the lowest step reward min_t r_t, PURE's min-form return of the first token;
- or any other of `crm_kernels.integrations.SCORE_KINDS`, as the TRL and OpenRLHF adapters take;

plus `outcome_weight` times verl's rule-based score (`compute_score`: the data source's default,
or `reward.custom_reward_function`), and `empty_score` for a response without any step text.
verl 0.9.1 gives advantage estimators only `token_level_rewards`, where this single number (and,
with `algorithm.use_kl_in_reward`, a KL term on every token) is all there is: per-step placement
and a step-level min-form estimator cannot be built on it, so neither is offered.

Select it in the keys `verl.trainer.main_ppo` reads (README "In a trainer"; tests/test_verl.py
composes verl's own config with exactly these overrides):

    python -m verl.trainer.main_ppo ... \\
        reward.reward_manager.source=importlib \\
        reward.reward_manager.module.path=pkg://crm_kernels.integrations.verl \\
        reward.reward_manager.name=CRMRewardManager \\
        +reward.reward_kwargs.crm_path=/path/to/crm

`reward.reward_kwargs`: crm_path (a folder saved by `ConditionalRewardModel.save_pretrained` with
its tokenizer), step_separator ("\\n\\n"), score, outcome_weight (1.0), empty_score, device,
batch_size. Importing this module with verl installed also registers the class as "crm" in
verl's reward-manager registry (`reward.reward_manager.name=crm` with
`VERL_USE_EXTERNAL_MODULES=crm_kernels.integrations.verl`).
"""

from __future__ import annotations

from typing import Any

from .rollouts import SCORE_KINDS, CRMScorer

REWARD_MANAGER_NAME = "crm"
REWARD_KWARGS = ("crm_path", "step_separator", "score", "outcome_weight", "empty_score", "device", "batch_size")

try:  # verl is optional: without it the class is defined on `object` and nothing is registered.
    from verl.experimental.reward_loop.reward_manager import register as _register
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase as _Base
except ImportError:
    _register, _Base = None, object


class CRMRewardManager(_Base):
    """verl 0.9.1 reward manager (see the module docstring): log S(T) (or the min step reward) of
    each response under a CRM, plus a weighted verifier score.

    verl constructs it; `scorer` lets a caller pass a ready `CRMScorer` instead of
    `reward.reward_kwargs.crm_path`.
    """

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None,
                 *, scorer: CRMScorer | None = None):  # fmt: skip
        options = _reward_kwargs(config)
        if (options.get("crm_path") is None) == (scorer is None):
            raise ValueError("CRMRewardManager needs reward.reward_kwargs.crm_path (or a scorer), and not both")
        score = options.get("score", "log_survival")
        if score not in SCORE_KINDS:
            raise ValueError(f"reward.reward_kwargs.score must be one of {SCORE_KINDS}, got {score!r}")
        if _Base is not object:
            super().__init__(config, tokenizer, compute_score)
        self.tokenizer, self.compute_score = tokenizer, compute_score
        self.score_kind = score
        self.outcome_weight = float(options.get("outcome_weight", 1.0))
        self.empty_score = options.get("empty_score")
        self.scorer = scorer or CRMScorer.from_pretrained(options["crm_path"], options.get("step_separator", "\n\n"),
                                                          int(options.get("batch_size", 32)), options.get("device"))  # fmt: skip

    async def run_single(self, data) -> dict:
        """One response (verl passes `data[i:i + 1]`; for multi-turn data the last sequence counts,
        as in verl's naive manager) -> {"reward_score", "reward_extra_info"}."""
        item = data[-1:][0]
        prompt, response = self._texts(item)
        scored = await self.loop.run_in_executor(None, lambda: self.scorer.score_responses([prompt], [response]))
        num_steps = int(scored.num_steps[0])
        reward = float(scored.score(self.score_kind)[0])
        if num_steps == 0 and self.empty_score is not None:
            reward = float(self.empty_score)
        extra = {"crm_log_survival": float(scored.log_survival_total[0]), "crm_num_steps": num_steps,
                 "crm_min_reward": float(scored.score("min_reward")[0])}  # fmt: skip
        if self.outcome_weight and self.compute_score is not None:
            outcome = await self._outcome_score(item, response)
            reward += self.outcome_weight * outcome
            extra["outcome_score"] = outcome
        return {"reward_score": reward, "reward_extra_info": extra}

    def _texts(self, item) -> tuple[str, str]:
        """The prompt's and the response's text without padding (verl's layout: prompts left-padded,
        responses right-padded, one attention mask over both), special tokens dropped as in verl's
        naive manager, so an EOS never becomes part of the last step."""
        prompt_ids, response_ids = item.batch["prompts"], item.batch["responses"]
        attention_mask = item.batch["attention_mask"].bool()
        prompt_mask, response_mask = attention_mask[: prompt_ids.shape[-1]], attention_mask[prompt_ids.shape[-1] :]
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        return decode(prompt_ids[prompt_mask]), decode(response_ids[response_mask])

    async def _outcome_score(self, item, response: str) -> float:
        non_tensor = item.non_tensor_batch
        kwargs = dict(data_source=non_tensor["data_source"], solution_str=response,
                      ground_truth=non_tensor["reward_model"]["ground_truth"], extra_info=non_tensor.get("extra_info", {}))  # fmt: skip
        result = self.compute_score(**kwargs)
        if hasattr(result, "__await__"):
            result = await result
        return float(result["score"] if isinstance(result, dict) else result)


def _reward_kwargs(config) -> dict[str, Any]:
    """`config.reward.reward_kwargs` as a dict (absent: empty); unknown keys are an error, so a
    typo does not silently fall back to a default."""
    reward = config.get("reward", {}) if hasattr(config, "get") else {}
    options = dict(reward.get("reward_kwargs", None) or {})
    unknown = sorted(set(options) - set(REWARD_KWARGS))
    if unknown:
        raise ValueError(f"unknown reward.reward_kwargs {unknown}; CRMRewardManager takes {list(REWARD_KWARGS)}")
    return options


def register() -> bool:
    """Registers CRMRewardManager as "crm" with verl's reward loop; False when verl is absent."""
    if _register is None:
        return False
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

    # verl refuses a second, different registration under one name; a re-import is not one.
    if REWARD_MANAGER.get(REWARD_MANAGER_NAME) is not CRMRewardManager:
        _register(REWARD_MANAGER_NAME)(CRMRewardManager)
    return True


register()
