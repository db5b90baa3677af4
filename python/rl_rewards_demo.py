"""CRM rewards in each trainer's shape, on the synthetic arithmetic task, without the trainers.

    python python/rl_rewards_demo.py [--crm train_crm_out/model]

Scores sampled trajectories (some with an injected wrong step) with a CRM and shows what each
adapter hands its trainer: per-token step rewards on the policy's tokens (OpenRLHF's process
reward) and their min-form returns, OpenRLHF's reward dict, TRL's reward list, and GRPO advantages
over each prompt's group. (verl 0.9.1 takes one number per response, the TRL one.) Without --crm a small CRM is
trained first (about 10 s on a CPU).
"""

from __future__ import annotations

import argparse
import random

import torch

from crm_kernels import rl
from crm_kernels.integrations import CRMScorer, token_rewards
from crm_kernels.integrations.openrlhf import make_reward_func
from crm_kernels.integrations.trl import make_grpo_reward_func
from crm_kernels.tasks import arithmetic


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crm", help="a CRM saved by train_crm.py")
    parser.add_argument("--crm-steps", type=int, default=200)
    parser.add_argument("--problems", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="trajectories per problem")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.crm:
        scorer = CRMScorer.from_pretrained(args.crm, step_separator=" ")
    else:
        scorer = arithmetic.trained_scorer(args.crm_steps, args.seed)
    tokenizer = scorer.tokenizer
    rng = random.Random(args.seed + 5)
    problems = [arithmetic.make_problem(rng) for _ in range(args.problems)]
    samples = [arithmetic.sample(problem, rng) for problem in problems for _ in range(args.samples)]
    prompts = [s.example.prompt for s in samples]
    responses = [" ".join(s.example.steps) for s in samples]

    # Responses as the policy's right-padded token ids: r_t on the token that ends each step.
    rows = [torch.tensor(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses]
    response_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id)
    response_mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True).bool()
    scored, step_token_index = scorer.score_tokens(prompts, response_ids, response_mask, tokenizer)
    per_token = token_rewards(scored, step_token_index, response_ids.shape[1])
    step_returns = rl.min_form(scored.step_rewards, scored.cu_steps)
    advantages = rl.to_token_spans(step_returns, scored.cu_steps, step_token_index, response_ids.shape[1]) * response_mask
    openrlhf = make_reward_func(scorer)([p + " " + r for p, r in zip(prompts, responses)], [p + " " for p in prompts])
    trl = make_grpo_reward_func(scorer)(prompts=prompts, completions=responses)
    cu_groups = torch.arange(0, len(samples) + 1, args.samples)
    grpo = rl.group_advantages(torch.tensor(trl), cu_groups, "grpo")

    torch.set_printoptions(precision=2, sci_mode=False, linewidth=140)
    for row, sample in enumerate(samples):
        wrong = "all steps right" if sample.first_error < 0 else f"first wrong step {sample.first_error}"
        print(f"{prompts[row]!r} -> {responses[row]!r} ({wrong})")
        print(f"    per-token step rewards: {per_token[row][response_mask[row]]}")
        print(f"    min-form advantages: {advantages[row][response_mask[row]]}")
        print(f"    OpenRLHF reward {float(openrlhf['rewards'][row]):.3f}, score S(T) {float(openrlhf['scores'][row]):.3f}; "
              f"TRL reward {trl[row]:.3f}; GRPO advantage {float(grpo[row]):+.2f}")  # fmt: skip
    return {"token_rewards": per_token, "min_form": advantages, "trl": trl, "grpo": grpo,
            "steps": [s.example.steps for s in samples], "first_error": [s.first_error for s in samples]}  # fmt: skip


if __name__ == "__main__":
    main()
