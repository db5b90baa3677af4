"""CRM rewards in each trainer's shape, on the synthetic arithmetic task, without the trainers.

    python python/rl_rewards_demo.py [--crm train_crm_out/model]

Scores sampled trajectories (some with an injected wrong step) with a CRM and shows what each
adapter hands its trainer: verl's reward tensor and min-form advantages, OpenRLHF's reward dict,
TRL's reward list, and GRPO advantages over each prompt's group. Without --crm a small CRM is
trained first (about 10 s on a CPU).
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from crm_kernels import rl  # noqa: E402
from crm_kernels.integrations.openrlhf import make_reward_func  # noqa: E402
from crm_kernels.integrations.trl import make_grpo_reward_func  # noqa: E402
from crm_kernels.integrations.verl import CRMRewardManager, min_form_advantage  # noqa: E402

import grpo_crm  # noqa: E402
import synthetic_arithmetic as synthetic  # noqa: E402


class DataProto:
    """The two fields of verl's DataProto a reward manager reads."""

    def __init__(self, batch, non_tensor_batch):
        self.batch, self.non_tensor_batch = batch, non_tensor_batch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crm", help="a CRM saved by train_crm.py")
    parser.add_argument("--crm-steps", type=int, default=200)
    parser.add_argument("--problems", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="trajectories per problem")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    scorer = grpo_crm.load_or_train_crm(argparse.Namespace(crm=args.crm, crm_steps=args.crm_steps, seed=args.seed,
                                                           no_progress=True))  # fmt: skip
    tokenizer = scorer.tokenizer
    rng = random.Random(args.seed + 5)
    problems = [synthetic.make_problem(rng) for _ in range(args.problems)]
    samples = [synthetic.sample(problem, rng) for problem in problems for _ in range(args.samples)]
    prompts = [s.example.prompt for s in samples]
    responses = [" ".join(s.example.steps) for s in samples]

    # verl: left-padded prompts, right-padded responses, one attention mask.
    encode = lambda text: torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    pad = lambda rows, side: torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_side=side,  # noqa: E731
                                                             padding_value=tokenizer.pad_token_id)
    prompt_rows, response_rows = [encode(p) for p in prompts], [encode(r) for r in responses]
    batch = {"prompts": pad(prompt_rows, "left"), "responses": pad(response_rows, "right"),
             "attention_mask": torch.cat([pad([torch.ones_like(r) for r in prompt_rows], "left").bool(),
                                          pad([torch.ones_like(r) for r in response_rows], "right").bool()], 1)}  # fmt: skip
    manager = CRMRewardManager(tokenizer, 0, scorer=scorer)
    result = manager(DataProto(batch, {}), return_dict=True)
    response_mask = batch["attention_mask"][:, batch["prompts"].shape[1]:]
    advantages, _ = min_form_advantage(result["reward_tensor"], response_mask)
    openrlhf = make_reward_func(scorer)([p + " " + r for p, r in zip(prompts, responses)], [p + " " for p in prompts])
    trl = make_grpo_reward_func(scorer)(prompts=prompts, completions=responses)
    cu_groups = torch.arange(0, len(samples) + 1, args.samples)
    grpo = rl.group_advantages(torch.tensor(trl), cu_groups, "grpo")

    torch.set_printoptions(precision=2, sci_mode=False, linewidth=140)
    for row, sample in enumerate(samples):
        wrong = "all steps right" if sample.first_error < 0 else f"first wrong step {sample.first_error}"
        print(f"{prompts[row]!r} -> {responses[row]!r} ({wrong})")
        print(f"    verl reward_tensor: {result['reward_tensor'][row][response_mask[row]]}")
        print(f"    min-form advantages: {advantages[row][response_mask[row]]}")
        print(f"    OpenRLHF reward {float(openrlhf['rewards'][row]):.3f}, score S(T) {float(openrlhf['scores'][row]):.3f}; "
              f"TRL reward {trl[row]:.3f}; GRPO advantage {float(grpo[row]):+.2f}")  # fmt: skip
    return {"reward_tensor": result["reward_tensor"], "min_form": advantages, "trl": trl, "grpo": grpo,
            "steps": [s.example.steps for s in samples], "first_error": [s.first_error for s in samples]}  # fmt: skip


if __name__ == "__main__":
    main()
