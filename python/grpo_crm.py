"""GRPO with a CRM reward, through TRL's GRPOTrainer, on a CPU in about a minute.

    python python/grpo_crm.py                          # trains a small CRM first, then the policy
    python python/grpo_crm.py --crm train_crm_out/model

The CRM is the one python/train_crm.py trains on the synthetic arithmetic task
(`crm_kernels.tasks.arithmetic.trained_scorer`, --crm-steps steps, unless --crm gives a saved one). The policy is a tiny randomly initialized
Llama over the same vocabulary, asked the task's questions ("Q 3 +4 -2"); every word it writes is
one step ("3+4=7"), so the step separator is a space. Two rewards, as a process reward is used in
practice: the CRM's log S(T) (`crm_kernels.integrations.trl.make_grpo_reward_func`) and an
outcome verifier (is the last step's result the answer?), weighted by --crm-weight and 1.

What it shows is the plumbing and a known property of product-form process rewards, not a trained
reasoner: log S(T) falls with every step written, so without a floor (--empty-score) the policy
learns within 100 steps that writing nothing is safest (log S = 0), and with one it learns to
write fewer steps. A random 2-layer policy does not learn the arithmetic in this budget.

It shows the plumbing, not a trained reasoner: a random 2-layer policy and a few dozen steps.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch

from crm_kernels.integrations import CRMScorer
from crm_kernels.integrations.trl import make_grpo_reward_func
from crm_kernels.tasks import arithmetic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crm", help="a CRM saved by train_crm.py (default: train one here)")
    parser.add_argument("--crm-steps", type=int, default=200, help="CRM training steps when --crm is not given")
    parser.add_argument("--steps", type=int, default=100, help="GRPO optimizer steps")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=8, help="completions per prompt (GRPO's group)")
    parser.add_argument("--max-completion-length", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-2)
    parser.add_argument("--crm-score", default="log_survival", help="the CRM reward: log_survival, survival, min...")
    parser.add_argument("--crm-weight", type=float, default=1.0, help="weight of the CRM reward")
    parser.add_argument("--verifier-weight", type=float, default=1.0, help="weight of the outcome verifier's reward")
    parser.add_argument("--empty-score", type=float, default=-50.0,
                        help="CRM reward of a completion with no step (else it would score log S = 0, the best)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="grpo_crm_out", help="TRL's output_dir; report.json is written there")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def load_or_train_crm(args) -> CRMScorer:
    if args.crm:
        return CRMScorer.from_pretrained(args.crm, step_separator=" ")
    return arithmetic.trained_scorer(args.crm_steps, args.seed, progress=not args.no_progress)


def tiny_policy(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return LlamaForCausalLM(config)


def answer_correct(prompts, completions, answer, **kwargs) -> list[float]:
    """The outcome verifier: 1 when the last written step ends in the problem's answer."""
    rewards = []
    for completion, expected in zip(completions, answer):
        words = completion.split()
        rewards.append(float(bool(words) and words[-1].rpartition("=")[2] == str(expected)))
    return rewards


def final_samples(policy, tokenizer, scorer, rng, args, count: int = 4) -> list[dict]:
    """What the trained policy writes for new questions (greedy), with the CRM's S(T) and the
    verifier's verdict: where they disagree, the policy has found steps the CRM trusts wrongly."""
    problems = [arithmetic.make_problem(rng) for _ in range(count)]
    samples = []
    policy.eval()
    for problem in problems:
        ids = tokenizer(problem.question, return_tensors="pt")
        with torch.no_grad():
            out = policy.generate(**ids, max_new_tokens=args.max_completion_length, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        completion = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        scored = scorer.score_responses([problem.question], [completion])
        samples.append({"question": problem.question, "completion": completion, "answer": problem.answer,
                        "verifier": answer_correct([problem.question], [completion], [problem.answer])[0],
                        "crm_survival": float(scored.log_survival_total.exp()[0])})  # fmt: skip
    return samples


def main(argv=None) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = parse_args(argv)
    started = time.perf_counter()
    scorer = load_or_train_crm(args)
    crm_seconds = time.perf_counter() - started
    tokenizer = arithmetic.build_tokenizer()
    tokenizer.eos_token = "[PAD]"  # the vocabulary has no end token: padding ends a completion
    rng = random.Random(args.seed + 1)
    problems = [arithmetic.make_problem(rng) for _ in range(args.steps * args.prompts_per_step)]
    dataset = Dataset.from_dict({"prompt": [p.question for p in problems], "answer": [p.answer for p in problems]})
    config = GRPOConfig(
        output_dir=args.out, max_steps=args.steps, learning_rate=args.lr, seed=args.seed,
        per_device_train_batch_size=args.prompts_per_step * args.num_generations,
        num_generations=args.num_generations, max_completion_length=args.max_completion_length,
        reward_weights=[args.crm_weight, args.verifier_weight], logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=True, bf16=False, disable_tqdm=args.no_progress,
    )  # fmt: skip
    trainer = GRPOTrainer(model=tiny_policy(tokenizer, args.seed), processing_class=tokenizer, args=config,
                          reward_funcs=[make_grpo_reward_func(scorer, args.crm_score, args.empty_score), answer_correct],
                          train_dataset=dataset)  # fmt: skip
    trainer.train()
    crm_key = f"rewards/crm_{args.crm_score}/mean"
    history = [entry for entry in trainer.state.log_history if crm_key in entry]
    quarter = max(1, len(history) // 4)

    def mean(key, entries):
        return sum(entry[key] for entry in entries) / len(entries)

    report = {"crm_seconds": crm_seconds, "grpo_seconds": time.perf_counter() - started - crm_seconds,
              "steps": len(history), "history": history}  # fmt: skip
    for key, name in ((crm_key, "crm_reward"), ("rewards/answer_correct/mean", "accuracy"),
                      ("crm/survival", "crm_survival"), ("crm/num_steps", "steps_written")):  # fmt: skip
        if history and key in history[0]:
            report[f"{name}_first_quarter"] = mean(key, history[:quarter])
            report[f"{name}_last_quarter"] = mean(key, history[-quarter:])
    report["samples"] = final_samples(trainer.model, tokenizer, scorer, rng, args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"CRM ready in {crm_seconds:.1f} s; GRPO {report['steps']} steps in {report['grpo_seconds']:.1f} s")
    for name in ("crm_reward", "crm_survival", "steps_written", "accuracy"):
        if f"{name}_first_quarter" in report:
            print(f"  {name:>17}: first quarter {report[f'{name}_first_quarter']:.3f}, "
                  f"last quarter {report[f'{name}_last_quarter']:.3f}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
