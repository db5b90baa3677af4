"""TRL: a reward function for `GRPOTrainer(reward_funcs=...)`.

    scorer = CRMScorer.from_pretrained("path/to/crm")
    trainer = GRPOTrainer(model=policy, reward_funcs=make_grpo_reward_func(scorer), ...)

GRPO normalizes within each prompt's group, so the trajectory score alone drives it: log S(T),
the CRM's log-probability that the answer is right, by default.
"""

from __future__ import annotations

from .rollouts import SCORE_KINDS, CRMScorer


def _text(message) -> str:
    """A standard completion is a string; a conversational one a list of messages."""
    if isinstance(message, str):
        return message
    if isinstance(message, list) and all(isinstance(turn, dict) and "content" in turn for turn in message):
        return "\n".join(str(turn["content"]) for turn in message if turn.get("role") != "system")
    raise TypeError(f"a prompt or completion must be a string or a list of messages, got {type(message).__name__}")


def make_grpo_reward_func(scorer: CRMScorer, score: str = "log_survival", empty_score: float | None = None):
    """A function with TRL's reward_funcs signature, (prompts, completions, **kwargs) -> list of
    floats, one per completion.

    score: "log_survival" (default), "survival", or a PRM aggregation of the step scores.
    empty_score: the reward of a completion without any step text; by default what the score
        gives an empty trajectory (nothing failed: log S = 0). Set a penalty to keep a policy
        from learning that saying nothing is safest.
    Logs the mean number of steps and mean S(T) through TRL's `log_metric`.
    """
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")

    def reward_func(prompts, completions, **kwargs) -> list[float]:
        scored = scorer.score_responses([_text(p) for p in prompts], [_text(c) for c in completions])
        rewards = scored.score(score)
        if empty_score is not None:
            rewards = rewards.masked_fill(scored.num_steps == 0, float(empty_score))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and len(completions):
            log_metric("crm/num_steps", float(scored.num_steps.float().mean()))
            log_metric("crm/survival", float(scored.log_survival_total.exp().mean()))
        return rewards.tolist()

    reward_func.__name__ = f"crm_{score}"
    return reward_func
