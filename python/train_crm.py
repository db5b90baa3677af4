"""Train a Conditional Reward Model end to end, then test it as a verifier.

    python python/train_crm.py                 # embedded default: no download, CPU, < 3 minutes
    python python/train_crm.py --backbone Qwen/Qwen2.5-0.5B --data prm.jsonl --step-tag "<step>"

The default builds a small Llama-style transformer from a config (random init) and a word-level
tokenizer in code, and trains it on synthetic multi-step arithmetic (crm_kernels/tasks/arithmetic.py)
where a wrong step is injected at a known place; a share of the flawed trajectories hide where
(as in the CRM paper's ablation), so they teach through L_W only. It then reports, on held-out
problems:

- the loss curve (loss_curve.png in --out);
- first-error localization: how often argmax_t p(z = t) is the true first wrong step, against
  picking a step at random;
- Best-of-N accuracy for N = 4, 8, 16 when choosing by S(T), against a random choice, a majority
  vote over final answers, and the oracle (any of the N right).

With --data, records are TRL stepwise-supervision or Math-Shepherd lines (JSONL); a held-out share
gives the loss and localization figures (Best-of-N needs sampled groups, so it runs on the
synthetic task only).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch

import crm_kernels
from crm_kernels import data, scoring
from crm_kernels.tasks import arithmetic
from crm_kernels.trainer import to_device, train


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-fraction", type=float, default=0.3,
                        help="share of flawed training trajectories whose first wrong step is hidden")
    parser.add_argument("--eval-trajectories", type=int, default=2000, help="held-out trajectories for localization")
    parser.add_argument("--eval-problems", type=int, default=300, help="held-out problems for Best-of-N")
    parser.add_argument("--best-of", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--backbone", help="a transformers model name or path instead of the embedded default")
    parser.add_argument("--data", help="a JSONL file of TRL or Math-Shepherd PRM records instead of the synthetic set")
    parser.add_argument("--step-tag", default=arithmetic.STEP_TAG, help="the token that ends each step")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="held-out share of --data")
    parser.add_argument("--out", default="train_crm_out", help="directory for the loss curve, figures and model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-save", action="store_true", help="do not save the trained model")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Model and data


def pretrained_model(name: str, step_tag: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.convert_tokens_to_ids(step_tag) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": [step_tag]})
    model = crm_kernels.ConditionalRewardModel.from_pretrained(name, data.step_token_id(tokenizer, step_tag))
    model.backbone.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def read_records(path: str) -> list:
    with open(path) as f:
        return [data.to_example(json.loads(line)) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# Training and evaluation


@torch.no_grad()
def score(model, collator, examples, device, batch_size: int = 256):
    """Runs the model over examples in order; returns the concatenated outputs and labels."""
    model.eval()
    parts = []
    for start in range(0, len(examples), batch_size):
        batch = to_device(collator(examples[start: start + batch_size]), device)
        output = model(batch["input_ids"], batch["attention_mask"])
        parts.append((output, batch))
    hazard_logits = torch.cat([output.hazard_logits for output, _ in parts])
    step_counts = torch.cat([output.cu_steps.diff() for output, _ in parts])
    labels = {key: torch.cat([batch[key] for _, batch in parts]) for key in ("outcome", "first_error")}
    return hazard_logits, data.cu_steps_from_lengths(step_counts), labels


def localization(model, collator, examples, device) -> dict:
    """First-error localization on flawed trajectories with a known z, and the held-out loss."""
    hazard_logits, cu_steps, labels = score(model, collator, examples, device)
    loss = crm_kernels.crm_loss(hazard_logits, cu_steps, labels["outcome"], labels["first_error"]).item()
    known = labels["first_error"] >= 0
    predicted = scoring.most_likely_first_error(hazard_logits, cu_steps)
    step_counts = cu_steps.diff().double()
    return {
        "held_out_loss": loss,
        "trajectories_with_known_first_error": int(known.sum()),
        "localization_accuracy": (predicted == labels["first_error"])[known].double().mean().item(),
        "localization_chance": (1.0 / step_counts[known]).mean().item(),
    }


def best_of_n(model, collator, groups, device, sizes) -> dict:
    """Best-of-N by S(T) against random choice, majority vote and the oracle, over problem groups."""
    per_problem = len(groups[0])
    flat = [s for group in groups for s in group]
    hazard_logits, cu_steps, _ = score(model, collator, [s.example for s in flat], device)
    log_survival_total = scoring.aggregate(hazard_logits, cu_steps, "log_survival").cpu()
    correct = torch.tensor([s.example.outcome for s in flat], dtype=torch.double).view(-1, per_problem)
    answers = torch.tensor([s.answer for s in flat]).view(-1, per_problem)
    scores = log_survival_total.view(-1, per_problem)
    results = {}
    for n in sizes:
        problems = correct.shape[0]
        cu_groups = torch.arange(problems + 1) * n
        chosen = scoring.best_of_n(scores[:, :n].reshape(-1), cu_groups)
        votes = torch.zeros(problems, 10).scatter_add_(1, answers[:, :n], torch.ones(problems, n))
        majority = votes.argmax(1)  # ties: the smallest answer
        first_of_majority = (answers[:, :n] == majority[:, None]).double().argmax(1)
        results[n] = {
            "crm_best_of_n": correct[:, :n].reshape(-1)[chosen].mean().item(),
            "random": correct[:, :n].mean().item(),
            "majority_vote": correct[torch.arange(problems), first_of_majority].mean().item(),
            "oracle": correct[:, :n].amax(1).mean().item(),
        }
    return results


def plot_losses(losses, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
              for i in range(len(losses))]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, alpha=0.3, label="batch")
    ax.plot(smooth, label=f"mean of {window}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("CRM loss (L_S / L_W + L_z)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.backbone:
        model, tokenizer = pretrained_model(args.backbone, args.step_tag)
    else:
        tokenizer = arithmetic.build_tokenizer()
        model = arithmetic.small_model(tokenizer, args.seed)
        args.step_tag = arithmetic.STEP_TAG
    model.to(args.device)
    collator = data.PRMCollator(tokenizer, args.step_tag)

    groups = None
    if args.data:
        examples = read_records(args.data)
        random.Random(args.seed).shuffle(examples)
        held_out = max(1, int(len(examples) * args.eval_fraction))
        train_examples, eval_examples = examples[held_out:], examples[:held_out]
    else:
        train_size = args.steps * args.batch_size
        train_examples = [s.example for s in arithmetic.make_dataset(train_size, args.seed, args.hidden_fraction)]
        eval_examples = [s.example for s in arithmetic.make_dataset(args.eval_trajectories, args.seed + 1)]
        _, groups = arithmetic.make_groups(args.eval_problems, max(args.best_of), args.seed + 2)

    losses = train(model, collator, train_examples, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed, device=args.device, progress=not args.no_progress)  # fmt: skip
    report = {"train_loss_first_50": sum(losses[:50]) / len(losses[:50]),
              "train_loss_last_50": sum(losses[-50:]) / len(losses[-50:])}  # fmt: skip
    report.update(localization(model, collator, eval_examples, args.device))
    if groups is not None:
        report["best_of_n"] = best_of_n(model, collator, groups, args.device, args.best_of)
    report["seconds"] = time.perf_counter() - started

    os.makedirs(args.out, exist_ok=True)
    plot_losses(losses, os.path.join(args.out, "loss_curve.png"))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"args": vars(args), "report": report, "losses": losses}, f, indent=1)
    if not args.no_save:
        model.save_pretrained(os.path.join(args.out, "model"))
        tokenizer.save_pretrained(os.path.join(args.out, "model"))
    print_report(report, args)
    return report


def print_report(report: dict, args) -> None:
    print(f"\ntrained {args.steps} steps of {args.batch_size} on {args.device} in {report['seconds']:.0f} s")
    print(f"train loss: {report['train_loss_first_50']:.3g} (first 50 steps) -> {report['train_loss_last_50']:.3g} "
          f"(last 50); held-out loss {report['held_out_loss']:.3g}")  # fmt: skip
    print(f"first-error localization: {report['localization_accuracy']:.1%} of "
          f"{report['trajectories_with_known_first_error']} flawed trajectories "
          f"(chance {report['localization_chance']:.1%})")  # fmt: skip
    if "best_of_n" in report:
        print("\nBest-of-N accuracy    N   CRM S(T)   random   majority vote   oracle")
        for n, row in report["best_of_n"].items():
            print(f"{'':20}{n:3d}   {row['crm_best_of_n']:8.1%}   {row['random']:6.1%}   "
                  f"{row['majority_vote']:13.1%}   {row['oracle']:6.1%}")  # fmt: skip
    print(f"\nloss curve, report.json{'' if args.no_save else ' and model'} in {args.out}/")


if __name__ == "__main__":
    main()
