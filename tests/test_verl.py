"""The verl adapter inside verl 0.9.1 itself (pinned in requirements-trainers.txt, installed without
its GPU stack): verl's own config composed with the README's overrides, its loaders
(`resolve_reward_manager_cls`, `load_reward_manager`), its reward-loop worker awaiting
`run_single` per response on a real `DataProto`, `assemble_rm_scores`, `apply_kl_penalty` and
`compute_advantage` with its own config objects. Nothing of verl is stood in for; Ray is installed
and imported by verl but never started (the worker class is used directly, as each Ray actor uses
it).
"""

import asyncio
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")

from adapter_fixtures import SEP, crm_folder, random_trajectories, scorer, tokenizer  # noqa: E402,F401
from crm_kernels.integrations import verl as adapter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def readme_verl_overrides() -> list[str]:
    """The `key=value` overrides of the README's verl command, as a user copies them."""
    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```bash\n(python -m verl\.trainer\.main_ppo.*?)```", readme, re.S)
    return [token for token in block.replace("\\\n", " ").split() if "=" in token and not token.startswith("--")]


def verl_config(crm_folder, *extra):
    """verl's own ppo_trainer config with the README's overrides (crm_path filled in)."""
    from hydra import compose, initialize_config_dir

    overrides = [o.replace("/path/to/crm", str(crm_folder)) for o in readme_verl_overrides()]
    overrides.append(f"actor_rollout_ref.model.path={crm_folder}")  # the policy tokenizer verl loads
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=[*overrides, *extra])


def verl_data(tokenizer, prompts, responses, eos=False):
    """A DataProto in verl's layout: prompts left-padded, responses right-padded, one mask."""
    from verl import DataProto

    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_rows = [torch.tensor(encode(p)) for p in prompts]
    response_rows = [torch.tensor(encode(r) + ([tokenizer.eos_token_id] if eos else []), dtype=torch.long) for r in responses]
    pad = lambda rows, side, value: torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_side=side,  # noqa: E731
                                                                    padding_value=value)
    ones = lambda rows: [torch.ones(len(r), dtype=torch.long) for r in rows]  # noqa: E731
    prompt_ids, response_ids = pad(prompt_rows, "left", tokenizer.pad_token_id), pad(response_rows, "right", tokenizer.pad_token_id)
    attention_mask = torch.cat([pad(ones(prompt_rows), "left", 0), pad(ones(response_rows), "right", 0)], 1)
    return DataProto.from_dict(
        tensors={"prompts": prompt_ids, "responses": response_ids, "attention_mask": attention_mask,
                 "input_ids": torch.cat([prompt_ids, response_ids], 1)},
        non_tensors={"data_source": np.array(["toy"] * len(prompts), dtype=object),
                     "reward_model": np.array([{"ground_truth": "5"} for _ in prompts], dtype=object),
                     "uid": np.array([f"group{i // 2}" for i in range(len(prompts))], dtype=object)},
    )  # fmt: skip


def rewards_through_verls_reward_loop(config, data):
    """What verl's RewardLoopManager.compute_rm_score does on each Ray actor, without Ray: a
    RewardLoopWorker per config awaits run_single on data[i:i+1] for every response, and the
    manager class assembles `rm_scores`."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    worker = RewardLoopWorker(config)
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    scores = [output["reward_score"] for output in outputs]
    return worker, outputs, resolve_reward_manager_cls(config).assemble_rm_scores(data, scores)


def write_verifier(tmp_path):
    path = tmp_path / "verifier.py"
    path.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                    "    return {'score': float(ground_truth in solution_str)}\n")  # fmt: skip
    return path


def test_readme_keys_select_the_crm_manager(crm_folder):
    """The README's overrides are keys verl reads (`reward.*`, not the legacy `reward_model.*` that
    main_ppo ignores), and they resolve to CRMRewardManager through verl's importlib loader."""
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    overrides = readme_verl_overrides()
    assert overrides and all(o.lstrip("+").startswith(("reward.", "algorithm.")) for o in overrides), overrides
    config = verl_config(crm_folder)
    assert config.reward.reward_manager.source == "importlib"
    assert resolve_reward_manager_cls(config) is adapter.CRMRewardManager
    assert config.reward.reward_kwargs.crm_path == str(crm_folder)


def test_registered_under_crm_in_verls_registry():
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls

    assert get_reward_manager_cls("crm") is adapter.CRMRewardManager
    assert adapter.register()  # a second import (each verl worker imports it) is no conflict


@pytest.mark.parametrize("score", ["log_survival", "min_reward"])
def test_reward_loop_scores_each_response(crm_folder, scorer, tokenizer, tmp_path, score, seed):
    """verl's loader builds the manager from the config (crm_path, score, outcome_weight from
    reward.reward_kwargs; the verifier from reward.custom_reward_function), its worker awaits
    run_single per response, and rm_scores holds each score at the response's last token."""
    prompts, steps = random_trajectories(seed, count=6)
    responses = [SEP.join(trajectory) for trajectory in steps]
    config = verl_config(crm_folder, f"+reward.reward_kwargs.score={score}", "+reward.reward_kwargs.outcome_weight=2.0",
                         f"reward.custom_reward_function.path={write_verifier(tmp_path)}")  # fmt: skip
    data = verl_data(tokenizer, prompts, responses)
    worker, outputs, rm_scores = rewards_through_verls_reward_loop(config, data)
    assert isinstance(worker.reward_manager, adapter.CRMRewardManager)

    expected = scorer.score_steps(prompts, steps)
    outcome = torch.tensor([float("5" in response) for response in responses])
    lengths = expected.num_steps
    if score == "log_survival":
        crm = expected.log_survival_total
    else:
        crm = torch.stack([expected.step_rewards[a:b].min() if b > a else torch.tensor(0.0)
                           for a, b in zip(expected.cu_steps[:-1], expected.cu_steps[1:])])  # fmt: skip
    torch.testing.assert_close(torch.tensor([o["reward_score"] for o in outputs]), (crm + 2.0 * outcome).float(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    response_lengths = data.batch["attention_mask"][:, data.batch["prompts"].shape[1]:].sum(1)
    placed = rm_scores[torch.arange(len(prompts)), response_lengths - 1]
    torch.testing.assert_close(placed, torch.tensor([o["reward_score"] for o in outputs]))
    assert (rm_scores != 0).sum() == (placed != 0).sum()
    assert [o["reward_extra_info"]["crm_num_steps"] for o in outputs] == lengths.tolist()
    assert [o["reward_extra_info"]["outcome_score"] for o in outputs] == outcome.tolist()


def test_eos_is_not_part_of_the_last_step(crm_folder, tokenizer, seed):
    """Responses ending with the policy's EOS score as without it (special tokens are dropped, as
    in verl's naive manager); a response cut mid-step (truncated) scores its partial step."""
    prompts, steps = random_trajectories(seed, count=5)
    responses = [SEP.join(trajectory) for trajectory in steps]
    config = verl_config(crm_folder, "+reward.reward_kwargs.outcome_weight=0")
    _, plain, _ = rewards_through_verls_reward_loop(config, verl_data(tokenizer, prompts, responses))
    _, with_eos, _ = rewards_through_verls_reward_loop(config, verl_data(tokenizer, prompts, responses, eos=True))
    assert [o["reward_score"] for o in with_eos] == pytest.approx([o["reward_score"] for o in plain], rel=1e-6, abs=1e-7)
    # Cut inside the last step (every step text has at least 2 characters): it stays a step.
    truncated = [response[: len(response) - len(s[-1]) // 2] if s else response for response, s in zip(responses, steps)]
    _, cut, _ = rewards_through_verls_reward_loop(config, verl_data(tokenizer, prompts, truncated))
    assert [o["reward_extra_info"]["crm_num_steps"] for o in cut] == [len(s) for s in steps]


def test_empty_response_gets_empty_score(crm_folder, tokenizer):
    config = verl_config(crm_folder, "+reward.reward_kwargs.outcome_weight=0", "+reward.reward_kwargs.empty_score=-3.0")
    _, outputs, _ = rewards_through_verls_reward_loop(config, verl_data(tokenizer, ["Question: ok", "Question: 2"],
                                                                        ["", "so x = 5"]))  # fmt: skip
    assert outputs[0]["reward_score"] == -3.0 and outputs[0]["reward_extra_info"]["crm_num_steps"] == 0
    assert outputs[1]["reward_score"] < 0


def test_bad_reward_kwargs_fail_at_load(crm_folder, tokenizer):
    from verl.trainer.ppo.reward import load_reward_manager

    for override, message in [("+reward.reward_kwargs.crm_pth=x", "unknown reward.reward_kwargs"),
                              ("+reward.reward_kwargs.score=sum", "score must be one of")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            load_reward_manager(verl_config(crm_folder, override), tokenizer)
    from omegaconf import open_dict

    config = verl_config(crm_folder)
    with open_dict(config):
        del config.reward.reward_kwargs["crm_path"]
    with pytest.raises(ValueError, match="crm_path"):
        load_reward_manager(config, tokenizer)


@pytest.mark.parametrize("use_kl", [False, True])
@pytest.mark.parametrize("estimator", ["grpo", "reinforce_plus_plus"])
def test_verls_advantages_from_crm_scores(crm_folder, scorer, tokenizer, estimator, use_kl, seed):
    """rm_scores -> verl's apply_kl_penalty (when algorithm.use_kl_in_reward) -> its
    compute_advantage with its AlgoConfig: the advantages verl trains on are those of the CRM
    score at each response's end plus verl's per-token KL term; nothing needs to find steps."""
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.ray_trainer import apply_kl_penalty, compute_advantage
    from verl.utils.config import omega_conf_to_dataclass

    prompts, steps = random_trajectories(seed, count=6)
    responses = [SEP.join(trajectory) for trajectory in steps]
    config = verl_config(crm_folder, "+reward.reward_kwargs.outcome_weight=0", f"algorithm.adv_estimator={estimator}",
                         f"algorithm.use_kl_in_reward={use_kl}", "algorithm.kl_ctrl.kl_coef=0.1")  # fmt: skip
    data = verl_data(tokenizer, prompts, responses)
    _, outputs, rm_scores = rewards_through_verls_reward_loop(config, data)
    response_mask = data.batch["attention_mask"][:, data.batch["prompts"].shape[1]:].float()
    data.batch["response_mask"] = response_mask
    data.batch["token_level_scores"] = rm_scores
    kl = torch.zeros_like(rm_scores)
    if use_kl:
        generator = torch.Generator().manual_seed(seed)
        data.batch["old_log_probs"] = -torch.rand(rm_scores.shape, generator=generator)
        data.batch["ref_log_prob"] = -torch.rand(rm_scores.shape, generator=generator)
        kl = (data.batch["old_log_probs"] - data.batch["ref_log_prob"]) * response_mask
        kl_ctrl = core_algos.get_kl_controller(config.algorithm.kl_ctrl)
        data, _ = apply_kl_penalty(data, kl_ctrl, kl_penalty=config.algorithm.kl_penalty)
    else:
        data.batch["token_level_rewards"] = rm_scores
    algorithm = omega_conf_to_dataclass(config.algorithm)
    data = compute_advantage(data, adv_estimator=config.algorithm.adv_estimator, gamma=1.0, lam=1.0,
                             config=algorithm)  # fmt: skip

    crm = torch.tensor([o["reward_score"] for o in outputs])
    token_rewards = rm_scores - 0.1 * kl
    torch.testing.assert_close(data.batch["token_level_rewards"], token_rewards)
    if estimator == "grpo":  # outcome: (total - group mean) / (group std + eps), on every response token
        totals = token_rewards.sum(1).view(-1, 2)
        expected = ((totals - totals.mean(1, keepdim=True)) / (totals.std(1, keepdim=True) + 1e-6)).view(-1)
        torch.testing.assert_close(data.batch["advantages"], expected[:, None] * response_mask, rtol=1e-4, atol=1e-5)
    else:  # reward-to-go, whitened over the batch: the CRM score reaches every earlier token
        to_go = token_rewards.flip(1).cumsum(1).flip(1) * response_mask
        assert torch.allclose(to_go[:, 0], crm - 0.1 * kl.sum(1), atol=1e-5)
        mean = to_go[response_mask.bool()].mean()
        std = to_go[response_mask.bool()].std()
        torch.testing.assert_close(data.batch["advantages"], (to_go - mean) / (std + 1e-8) * response_mask, rtol=1e-4,
                                   atol=1e-4)  # fmt: skip
