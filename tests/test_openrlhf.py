"""The OpenRLHF adapter inside OpenRLHF 0.11.2 itself (pinned in requirements-trainers.txt,
installed without its GPU stack): its `SingleTurnAgentExecutor` loads the README's reward file and
scores a rollout, its `compute_reward` takes the per-token rewards' place, and its own CLI parser
(built from the installed train_ppo_ray.py) parses the README's command.

Named stand-ins, for what cannot run without a GPU:
- the vLLM engine the executor generates with (`FixedGeneration`: returns given token ids);
- `deepspeed`, imported at the top of openrlhf/models/utils.py (the file holding `compute_reward`):
  a stub that fails if anything uses it, visible only while that one file is loaded;
- the three lines of OpenRLHF's `_process_response_into_experience` that build `action_mask` from
  the executor's `action_ranges` (its module imports vLLM): `openrlhf_action_mask` below.
"""

import argparse
import ast
import asyncio
import datetime
import os
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import torch

openrlhf = pytest.importorskip("openrlhf")

from adapter_fixtures import SEP, crm_folder, random_trajectories, scorer, tokenizer  # noqa: E402,F401
from crm_kernels.integrations.openrlhf import action_token_rewards, compute_process_reward  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(openrlhf.__file__).parent


class FixedGeneration:
    """STAND-IN for OpenRLHF's vLLM engine: `generate` returns the given response token ids."""

    def __init__(self, response_ids, finish_reason):
        self.response_ids, self.finish_reason = list(response_ids), finish_reason

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        output = types.SimpleNamespace(token_ids=self.response_ids, finish_reason=self.finish_reason, logprobs=None)
        return types.SimpleNamespace(outputs=[output])


def openrlhf_compute_reward():
    """OpenRLHF's own compute_reward, from the installed openrlhf/models/utils.py, loaded with a
    deepspeed stub that raises if used (the package __init__, which imports the actor and its
    GPU stack, is not run)."""
    stub = types.ModuleType("deepspeed")

    def never(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AssertionError(f"deepspeed stub: deepspeed.{name} was used")

    stub.__getattr__ = never
    spec = importlib.util.spec_from_file_location("openrlhf_models_utils", PACKAGE / "models" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    # Only the deepspeed entry is swapped and restored: mock.patch.dict(sys.modules) would also
    # drop every module first imported while the file loads (torch._dynamo among them), and
    # importing those again later fails inside torch.
    saved = sys.modules.get("deepspeed")
    sys.modules["deepspeed"] = stub
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["deepspeed"]
        else:
            sys.modules["deepspeed"] = saved
    return module.compute_reward


def openrlhf_action_mask(output):
    """RE-STATED from OpenRLHF's _process_response_into_experience (its module imports vLLM):
    sequences = observation tokens, action_mask = ones over action_ranges, shifted by one."""
    sequences = torch.tensor(output["observation_tokens"], dtype=torch.long)
    action_mask = torch.zeros_like(sequences)
    for start, end in output["action_ranges"]:
        action_mask[start:end] = 1
    return sequences, action_mask[1:]


@pytest.fixture
def executor(crm_folder, monkeypatch):
    """OpenRLHF's executor with the README's reward file, as `--reward.remote_url` loads it."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    monkeypatch.setenv("CRM_PATH", str(crm_folder))
    monkeypatch.setenv("CRM_POLICY_PATH", str(crm_folder))  # the test's policy shares the tokenizer
    return SingleTurnAgentExecutor(remote_rm_url=str(ROOT / "python" / "openrlhf_crm_reward.py"))


def rollout(executor, tokenizer, prompt, response_ids, finish_reason="stop"):
    params = types.SimpleNamespace(max_tokens=256, logprobs=None)
    engine = FixedGeneration(response_ids, finish_reason)
    return asyncio.run(executor.execute(prompt, "5", params, 1024, tokenizer, engine))


@pytest.mark.parametrize("ending", ["eos", "truncated"])
def test_reward_file_through_openrlhfs_executor(executor, scorer, tokenizer, ending, seed):
    """The executor decodes prompt + response with skip_special_tokens=False; the reward is the
    CRM's log S(T) of the response text without the EOS, whole or cut mid-step."""
    prompts, steps = random_trajectories(seed, count=4)
    for prompt, trajectory in zip(prompts[1:], steps[1:]):  # responses with at least one step
        text = SEP.join(trajectory)
        if ending == "truncated":
            text = text[: len(text) - len(trajectory[-1]) // 2]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = ids + [tokenizer.eos_token_id] if ending == "eos" else ids
        output = rollout(executor, tokenizer, prompt, ids, "stop" if ending == "eos" else "length")
        # OpenRLHF logs and swallows a failing reward function: a None here is that failure.
        assert output["reward"] is not None, "the reward function failed inside OpenRLHF"
        expected = scorer.score_responses([prompt], [text])
        torch.testing.assert_close(output["reward"].double(), expected.log_survival_total.double(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(output["scores"].double(), expected.log_survival_total.exp().double(), rtol=1e-5, atol=1e-6)
        assert float(output["extra_logs"]["crm_num_steps"][0]) == len(trajectory)
        assert output["truncated"] == (ending == "truncated")


def test_per_token_rewards_in_openrlhfs_layout(executor, scorer, tokenizer, seed):
    """action_token_rewards puts r_k on the action entries (OpenRLHF's shifted layout, after the
    prompt) of the tokens that end the steps; with compute_process_reward in compute_reward's
    place each row carries log S(T) minus the same KL term."""
    compute_reward = openrlhf_compute_reward()
    prompts, steps = random_trajectories(seed, count=5)
    rows, masks, texts = [], [], []
    for prompt, trajectory in zip(prompts, steps):
        text = SEP.join(trajectory)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequences, action_mask = openrlhf_action_mask(rollout(executor, tokenizer, prompt, ids))
        rows.append(sequences), masks.append(action_mask), texts.append(text)
    width = max(len(r) for r in rows)
    sequences = torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=tokenizer.pad_token_id) for r in rows])
    action_mask = torch.stack([torch.nn.functional.pad(m, (0, width - 1 - len(m))) for m in masks])

    rewards = action_token_rewards(scorer, prompts, sequences, action_mask, tokenizer)
    expected = scorer.score_responses(prompts, texts)
    torch.testing.assert_close(rewards.sum(1).double(), expected.log_survival_total.double(), rtol=1e-5, atol=1e-6)
    assert not rewards[~action_mask.bool()].any()  # nothing on prompt or padding entries
    assert (rewards != 0).sum(1).tolist() == expected.num_steps.tolist()
    for row, mask in enumerate(action_mask):  # the last step ends on the response's last token (EOS)
        if expected.num_steps[row]:
            assert rewards[row, int(mask.nonzero().max())] != 0

    kl = torch.rand(action_mask.shape, generator=torch.Generator().manual_seed(seed)) * action_mask
    process = compute_process_reward(rewards, 0.05, kl, action_mask)
    outcome = compute_reward(expected.log_survival_total.float(), 0.05, kl, action_mask=action_mask)
    torch.testing.assert_close(process.sum(1), outcome.sum(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(process - rewards, -0.05 * kl)  # the same KL term OpenRLHF subtracts


def openrlhf_cli_parser():
    """OpenRLHF's own argument parser: the statements of train_ppo_ray.py's __main__ block up to
    `parse_args`, executed from the installed file (its module-level imports, vLLM and Ray, are
    not needed to build the parser and are not run)."""
    tree = ast.parse((PACKAGE / "cli" / "train_ppo_ray.py").read_text())
    (main,) = [node for node in tree.body if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)]
    statements = []
    for node in main.body:
        if isinstance(node, ast.Assign) and "parse_args" in ast.unparse(node.value):
            break
        statements.append(node)
    namespace = {"argparse": argparse, "datetime": datetime.datetime, "os": os}
    exec(compile(ast.Module(body=statements, type_ignores=[]), str(PACKAGE / "cli" / "train_ppo_ray.py"), "exec"), namespace)
    return namespace["parser"]


def test_readme_openrlhf_command_parses_with_openrlhfs_parser():
    parser = openrlhf_cli_parser()
    readme = (ROOT / "README.md").read_text()
    (command,) = re.findall(r"```bash\n([^`]*openrlhf\.cli\.train_ppo_ray[^`]*)```", readme)
    arguments = [token for token in command.replace("\\\n", " ").split("train_ppo_ray", 1)[1].split() if token != "..."]
    args = parser.parse_args(arguments)
    reward_file = getattr(args, "reward.remote_url")
    assert reward_file.endswith(".py") and (ROOT / reward_file).exists()  # the executor loads .py paths as files
    with pytest.raises(SystemExit):  # the flag earlier READMEs gave
        parser.parse_args(["--remote_rm_url", reward_file])
