"""End to end: TRL's GRPOTrainer optimizes a tiny random policy against a CRM reward on CPU
(python/grpo_crm.py with a briefly trained CRM). Slow-marked; `make test` runs it after the rest."""

import json
import math
from pathlib import Path

import pytest

from benchmarks import report

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
    for sample in report["samples"]:  # what the trained policy writes, judged by both rewards
        assert sample["verifier"] in (0.0, 1.0) and 0.0 <= sample["crm_survival"] <= 1.0


def test_readme_reward_hacking_table_is_the_committed_measurement():
    from benchmarks import reward_hacking

    with open(reward_hacking.RESULTS) as f:
        committed = json.load(f)
    readme = Path(reward_hacking.ROOT) / "README.md"
    assert report.read_section(readme, reward_hacking.README_SECTION) == reward_hacking.markdown(committed).rstrip("\n")
    for runs in committed["runs"].values():
        for run in runs:
            assert run["hacking_gap"] == pytest.approx(run["crm_survival_last_quarter"] - run["accuracy_last_quarter"])


@pytest.mark.slow
def test_reward_hacking_measurement_reproduces(tmp_path):
    """benchmarks/reward_hacking.py on seed 0 gives the committed seed-0 runs (the runs are
    deterministic on this machine: two full runs agreed to every printed digit)."""
    from benchmarks import reward_hacking

    with open(reward_hacking.RESULTS) as f:
        committed = json.load(f)
    output = reward_hacking.main(["--seeds", "0", "--out", str(tmp_path)])
    for name, runs in output["runs"].items():
        (run,) = runs
        (expected,) = [r for r in committed["runs"][name] if r["seed"] == 0]
        for key in ("crm_reward_last_quarter", "crm_survival_last_quarter", "accuracy_last_quarter", "hacking_gap"):
            assert run[key] == pytest.approx(expected[key], abs=0.01), (name, key)
        assert len(run["samples"]) == 4
