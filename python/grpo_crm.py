"""GRPO with a CRM reward (or a baseline reward model's), through TRL's GRPOTrainer, on a CPU in about a minute.

    python python/grpo_crm.py                          # trains a small CRM first, then the policy
    python python/grpo_crm.py --crm train_crm_out/model
    python python/grpo_crm.py --objective prm          # the reward model a PRM instead (or orm, pqm)

The reward model (RM) is trained on the synthetic arithmetic task (`crm_kernels.tasks.arithmetic.
trained_model`, --crm-steps steps, under --objective) unless --crm gives a saved one (of any
objective: python/train_crm.py --objective ... saves them). The policy is a tiny randomly
initialized Llama over the same vocabulary, asked the task's questions ("Q 3 +4 -2"); every word
it writes is one step ("3+4=7"), so the step separator is a space. Two rewards, as a process
reward is used in practice: the RM's and an outcome verifier (is the last step's result the
answer?), weighted by --crm-weight and --verifier-weight. A CRM's reward is its log S(T) (or
--crm-score; `crm_kernels.integrations.trl.make_grpo_reward_func`); a baseline's is the log of its
probability that the answer is right (`ConditionalRewardModel.log_outcome_probability`: the sum of
the step log-sigmoids for PRM, the last step's for ORM, the minimum for PQM).

What it shows is the plumbing and a known property of product-form process rewards, not a trained
reasoner: log S(T) falls with every step written, so without a floor (--empty-score) the policy
learns within 100 steps that writing nothing is safest (log S = 0), and with one it learns to
write fewer steps. A random 2-layer policy does not learn the arithmetic in this budget.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch

from crm_kernels import ConditionalRewardModel
from crm_kernels.data import PRMCollator, PRMExample
from crm_kernels.integrations import CRMScorer
from crm_kernels.integrations.trl import make_grpo_reward_func
from crm_kernels.modeling import OBJECTIVES
from crm_kernels.tasks import arithmetic
from crm_kernels.trainer import forward


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crm", help="a reward model saved by train_crm.py, any objective (default: train one here)")
    parser.add_argument("--objective", default="crm", choices=OBJECTIVES, help="the RM's objective when trained here")
    parser.add_argument("--crm-steps", type=int, default=200, help="RM training steps when --crm is not given")
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


def load_or_train_rm(args):
    """The reward model and its tokenizer: --crm's, or one trained here under --objective."""
    if args.crm:
        from transformers import AutoTokenizer

        return ConditionalRewardModel.from_pretrained(args.crm).eval(), AutoTokenizer.from_pretrained(args.crm)
    return arithmetic.trained_model(args.crm_steps, args.seed, args.objective, progress=not args.no_progress)


@torch.no_grad()
def rm_log_probability(model, tokenizer, prompts, completions) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] the RM's log-probability that each completion's answer is right (each word a step) and
    [B] its number of steps."""
    examples = [PRMExample(prompt, completion.split(), outcome=True) for prompt, completion in zip(prompts, completions)]
    output = forward(model, PRMCollator(tokenizer, arithmetic.STEP_TAG)(examples))
    return model.log_outcome_probability(output), output.cu_steps.diff()


def rm_reward_func(model, tokenizer, args):
    """The RM's reward in TRL's reward_funcs signature: a CRM's through the library's adapter
    (`make_grpo_reward_func`, which logs crm/num_steps and crm/survival), a baseline's as its
    log-probability that the answer is right (logging rm/num_steps and rm/probability)."""
    if model.objective == "crm":
        scorer = CRMScorer(model, tokenizer, arithmetic.STEP_TAG, step_separator=" ")
        return make_grpo_reward_func(scorer, args.crm_score, args.empty_score), "crm/survival", "crm/num_steps"

    def reward_func(prompts, completions, **kwargs) -> list[float]:
        log_probability, num_steps = rm_log_probability(model, tokenizer, prompts, completions)
        rewards = log_probability.masked_fill(num_steps == 0, float(args.empty_score))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and len(completions):
            log_metric("rm/num_steps", float(num_steps.float().mean()))
            log_metric("rm/probability", float(log_probability.exp().mean()))
        return rewards.tolist()

    reward_func.__name__ = f"{model.objective}_log_probability"
    return reward_func, "rm/probability", "rm/num_steps"


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


def final_samples(policy, tokenizer, rm, rm_tokenizer, rng, args, count: int = 4) -> list[dict]:
    """What the trained policy writes for new questions (greedy), with the RM's probability that
    the answer is right and the verifier's verdict: where they disagree, the policy has found
    steps the RM trusts wrongly."""
    problems = [arithmetic.make_problem(rng) for _ in range(count)]
    samples = []
    policy.eval()
    for problem in problems:
        ids = tokenizer(problem.question, return_tensors="pt")
        with torch.no_grad():
            out = policy.generate(**ids, max_new_tokens=args.max_completion_length, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        completion = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        log_probability, _ = rm_log_probability(rm, rm_tokenizer, [problem.question], [completion])
        samples.append({"question": problem.question, "completion": completion, "answer": problem.answer,
                        "verifier": answer_correct([problem.question], [completion], [problem.answer])[0],
                        "rm_probability": float(log_probability.exp()[0])})  # fmt: skip
    return samples


def main(argv=None) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = parse_args(argv)
    started = time.perf_counter()
    rm, rm_tokenizer = load_or_train_rm(args)
    rm_reward, probability_key, steps_key = rm_reward_func(rm, rm_tokenizer, args)
    rm_seconds = time.perf_counter() - started
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
                          reward_funcs=[rm_reward, answer_correct],
                          train_dataset=dataset)  # fmt: skip
    trainer.train()
    reward_key = f"rewards/{rm_reward.__name__}/mean"
    history = [entry for entry in trainer.state.log_history if reward_key in entry]
    quarter = max(1, len(history) // 4)

    def mean(key, entries):
        return sum(entry[key] for entry in entries) / len(entries)

    report = {"rm_seconds": rm_seconds, "grpo_seconds": time.perf_counter() - started - rm_seconds,
              "steps": len(history), "history": history}  # fmt: skip
    for key, name in ((reward_key, "rm_reward"), ("rewards/answer_correct/mean", "accuracy"),
                      (probability_key, "rm_probability"), (steps_key, "steps_written")):  # fmt: skip
        if history and key in history[0]:
            report[f"{name}_first_quarter"] = mean(key, history[:quarter])
            report[f"{name}_last_quarter"] = mean(key, history[-quarter:])
    report["objective"] = rm.objective
    report["samples"] = final_samples(trainer.model, tokenizer, rm, rm_tokenizer, rng, args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"{rm.objective.upper()} ready in {rm_seconds:.1f} s; GRPO {report['steps']} steps in "
          f"{report['grpo_seconds']:.1f} s")  # fmt: skip
    for name in ("rm_reward", "rm_probability", "steps_written", "accuracy"):
        if f"{name}_first_quarter" in report:
            print(f"  {name:>17}: first quarter {report[f'{name}_first_quarter']:.3f}, "
                  f"last quarter {report[f'{name}_last_quarter']:.3f}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
