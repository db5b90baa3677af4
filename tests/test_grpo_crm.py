"""End to end: TRL's GRPOTrainer optimizes a tiny random policy against a CRM reward on CPU
(python/grpo_crm.py with a briefly trained CRM). Slow-marked; `make test` runs it after the rest."""

import math

import pytest

pytest.importorskip("trl")

import grpo_crm  # noqa: E402


@pytest.mark.slow
def test_grpo_trainer_with_crm_reward(tmp_path):
    report = grpo_crm.main(["--crm-steps", "30", "--steps", "3", "--prompts-per-step", "2", "--num-generations", "4",
                            "--no-progress", "--out", str(tmp_path)])  # fmt: skip
    history = report["history"]
    assert report["steps"] == len(history) == 3
    for entry in history:
        # Every completion got a CRM reward: log S(T) <= 0, or the empty-completion floor.
        assert -50.0 <= entry["rewards/crm_log_survival/mean"] <= 0.0
        assert 0.0 <= entry["rewards/answer_correct/mean"] <= 1.0
        assert 0.0 < entry["crm/num_steps"] <= 6 and math.isfinite(entry["crm/survival"])
    assert any(entry["grad_norm"] > 0 for entry in history)  # the policy was updated
