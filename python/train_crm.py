"""Train a Conditional Reward Model end to end with CRMTrainer, then test it as a verifier.

    python python/train_crm.py                 # embedded default: no download, CPU, < 1 minute
    python python/train_crm.py --objective prm --task hard
    python python/train_crm.py --backbone Qwen/Qwen2.5-0.5B --data prm.jsonl --step-tag "<step>"

The default builds a small Llama-style transformer from a config (random init) and a word-level
tokenizer in code, and trains it with `crm_kernels.trainer.CRMTrainer` (padding-free batches) on
synthetic multi-step arithmetic (crm_kernels/tasks/arithmetic.py) where a wrong step is injected
at a known place; a share of the flawed trajectories hide where (as in the CRM paper's ablation),
so they teach through L_W only. --objective trains a baseline instead (PRM and PQM need every
first wrong step: --hidden-fraction 0). It then reports, on held-out problems:

- the loss curve (loss_curve.png in --out);
- the held-out loss and first-error localization (`CRMTrainer.evaluate`): how often the model's
  predicted first wrong step (argmax_t p(z = t) for a CRM) is the true one, against picking a
  step at random;
- Best-of-N accuracy for N = 4, 8, 16 when choosing by the objective's ranking score (S(T) for a
  CRM), against a random choice, a majority vote over final answers, and the oracle (any of the N
  right).

With --data, records are TRL stepwise-supervision or Math-Shepherd lines (JSONL); a held-out share
gives the loss and localization figures (Best-of-N needs sampled groups, so it runs on the
synthetic task only). --write stores the report as benchmarks/results/train_crm.json and its table
in the README (tests/test_train_crm.py reruns the defaults against it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

import crm_kernels
from crm_kernels import data, evaluation
from crm_kernels.modeling import OBJECTIVES
from crm_kernels.tasks import arithmetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "train_crm.json")
README_SECTION = "train-crm"  # the README's <!-- train-crm:begin/end --> markers
TASKS = {"arithmetic": ("arithmetic",), "hard": arithmetic.HARD}  # the task's mistakes (arithmetic.MISTAKES)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="crm", choices=OBJECTIVES)
    parser.add_argument("--task", default="arithmetic", choices=TASKS,
                        help="arithmetic: slips in a step's own sum; hard: also steps that copy a wrong value or "
                             "misread the question")  # fmt: skip
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-fraction", type=float, default=None,
                        help="share of flawed training trajectories whose first wrong step is hidden "
                             "(default 0.3 for CRM and ORM, 0 for PRM and PQM, which need it)")  # fmt: skip
    parser.add_argument("--padded", action="store_true", help="padded batches instead of padding-free ones")
    parser.add_argument("--eval-trajectories", type=int, default=2000, help="held-out trajectories for localization")
    parser.add_argument("--eval-problems", type=int, default=300, help="held-out problems for Best-of-N")
    parser.add_argument("--best-of", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--backbone", help="a transformers model name or path instead of the embedded default")
    parser.add_argument("--data", help="a JSONL file of TRL or Math-Shepherd PRM records instead of the synthetic set")
    parser.add_argument("--step-tag", default=arithmetic.STEP_TAG, help="the token that ends each step")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="held-out share of --data")
    parser.add_argument("--out", default="train_crm_out", help="directory for the loss curve, figures and model")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is available")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-save", action="store_true", help="do not save the trained model")
    parser.add_argument("--write", action="store_true", help="store the report and the README table")
    args = parser.parse_args(argv)
    if args.hidden_fraction is None:
        args.hidden_fraction = 0.3 if args.objective in ("crm", "orm") else 0.0
    if args.objective in ("prm", "pqm") and args.hidden_fraction > 0:
        parser.error(f"--objective {args.objective} needs every flawed trajectory's first wrong step: "
                     "--hidden-fraction 0")  # fmt: skip
    return args


# ---------------------------------------------------------------------------------------------
# Model, data and training


def pretrained_model(name: str, step_tag: str, objective: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.convert_tokens_to_ids(step_tag) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": [step_tag]})
    model = crm_kernels.ConditionalRewardModel.from_pretrained(name, data.step_token_id(tokenizer, step_tag),
                                                               objective=objective)  # fmt: skip
    model.backbone.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def read_records(path: str) -> list:
    with open(path) as f:
        return [data.to_example(json.loads(line)) for line in f if line.strip()]


def make_trainer(model, tokenizer, step_tag: str, examples: list, *, steps: int, batch_size: int, lr: float,
                 seed: int, output_dir: str, padding_free: bool = True, progress: bool = False, cpu: bool = True):  # fmt: skip
    """CRMTrainer with this example's recipe: AdamW (weight decay 0.01), a cosine schedule after
    10% warmup, gradients clipped at 1, the loss logged every step; nothing saved on the way.
    python/compare_objectives.py trains every objective with it."""
    from transformers import PrinterCallback

    from crm_kernels.trainer import CRMTrainer, CRMTrainingArguments

    arguments = CRMTrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size, per_device_eval_batch_size=256,
        learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10), weight_decay=0.01,
        max_grad_norm=1.0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=cpu, seed=seed,
        disable_tqdm=not progress,
    )  # fmt: skip
    trainer = CRMTrainer(model=model, args=arguments, train_dataset=examples,
                         data_collator=data.PRMCollator(tokenizer, step_tag, padding_free=padding_free))  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # the losses stay in state.log_history
    return trainer


def logged_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def best_of_n(model, tokenizer, step_tag: str, groups: list, sizes, device) -> dict:
    """Best-of-N by the objective's ranking score over the first N of each problem's candidates,
    against random choice, majority vote and the oracle."""
    flat = [s for group in groups for s in group]
    predictions = evaluation.predict(model, data.PRMCollator(tokenizer, step_tag), [s.example for s in flat],
                                     device=device)  # fmt: skip
    shape = (len(groups), len(groups[0]))
    answers = torch.tensor([s.answer for s in flat]).view(shape)
    curve = evaluation.best_of_n_curve(predictions.ranking_score.view(shape), predictions.outcome.view(shape),
                                       sizes, answers)  # fmt: skip
    return {str(n): row for n, row in curve.items()}


def plot_losses(losses, path: str, objective: str) -> None:
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
    ax.set_ylabel(f"{objective.upper()} loss" + (" (L_S / L_W + L_z)" if objective == "crm" else ""))
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
        model, tokenizer = pretrained_model(args.backbone, args.step_tag, args.objective)
    else:
        tokenizer = arithmetic.build_tokenizer()
        model = arithmetic.small_model(tokenizer, args.seed, objective=args.objective)
        args.step_tag = arithmetic.STEP_TAG

    groups = None
    if args.data:
        examples = read_records(args.data)
        random.Random(args.seed).shuffle(examples)
        held_out = max(1, int(len(examples) * args.eval_fraction))
        train_examples, eval_examples = examples[held_out:], examples[:held_out]
    else:
        mistakes = TASKS[args.task]
        train_examples = [s.example for s in arithmetic.make_dataset(args.steps * args.batch_size, args.seed,
                                                                     args.hidden_fraction, mistakes)]  # fmt: skip
        eval_examples = [s.example for s in arithmetic.make_dataset(args.eval_trajectories, args.seed + 1,
                                                                    mistakes=mistakes)]  # fmt: skip
        _, groups = arithmetic.make_groups(args.eval_problems, max(args.best_of), args.seed + 2, mistakes)

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as checkpoints:
        trainer = make_trainer(model, tokenizer, args.step_tag, train_examples, steps=args.steps,
                               batch_size=args.batch_size, lr=args.lr, seed=args.seed, output_dir=checkpoints,
                               padding_free=not args.padded, progress=not args.no_progress,
                               cpu=args.cpu or not torch.cuda.is_available())  # fmt: skip
        trainer.train()
        metrics = trainer.evaluate(eval_examples, metric_key_prefix="held_out")
    losses = logged_losses(trainer)
    report = {"objective": args.objective, "task": args.task if not args.data else None,
              "train_loss_first_50": sum(losses[:50]) / len(losses[:50]),
              "train_loss_last_50": sum(losses[-50:]) / len(losses[-50:]),
              **{key.removeprefix("held_out_"): value for key, value in metrics.items()}}  # fmt: skip
    if groups is not None:
        report["best_of_n"] = best_of_n(model, tokenizer, args.step_tag, groups, args.best_of, trainer.args.device)
    report["seconds"] = time.perf_counter() - started

    plot_losses(losses, os.path.join(args.out, "loss_curve.png"), args.objective)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"args": vars(args), "report": report, "losses": losses}, f, indent=1)
    if not args.no_save:
        trainer.save_model(os.path.join(args.out, "model"))
        tokenizer.save_pretrained(os.path.join(args.out, "model"))
    print_report(report, args)
    if args.write:
        write_results(report, args)
    return report


def markdown(report: dict, args: dict) -> str:
    """The README table of a run on the synthetic task."""
    name = "S(T)" if report["objective"] == "crm" else f"the {report['objective'].upper()} score"
    lines = [f"At its defaults ({args['steps']} steps of {args['batch_size']} trajectories, seed {args['seed']}) "
             f"it took {report['seconds']:.0f} s on the project's 2-core CPU machine and printed:", "",
             f"| held out | {report['objective'].upper()} | baseline |", "|---|---|---|",
             f"| first-error localization, {report['flawed_with_known_first_error']} flawed trajectories | "
             f"{report['localization_accuracy']:.1%} | {report['localization_chance']:.1%} (random step) |"]  # fmt: skip
    for index, (n, row) in enumerate(report["best_of_n"].items()):
        label = f"Best-of-{n} by {name}, {args['eval_problems']} problems" if index == 0 else f"Best-of-{n}"
        lines.append(f"| {label} | {row['best_of_n']:.1%} | random {row['random']:.1%}, majority vote "
                     f"{row['majority_vote']:.1%}, oracle {row['oracle']:.1%} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def store_results(path: str, payload: dict, section: str, table: str) -> None:
    """Writes `payload` as JSON at `path` and `table` between the README's `section` markers
    (benchmarks/report.py, the benchmarks' own)."""
    sys.path.insert(0, ROOT)  # benchmarks/ is the repository's, beside python/
    from benchmarks import report as readme

    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    if not readme.replace_section(Path(ROOT) / "README.md", section, table):
        raise RuntimeError(f"README.md has no <!-- {section}:begin/end --> markers")


def write_results(report: dict, args) -> None:
    stored = {"args": {key: value for key, value in vars(args).items() if key not in ("out", "write")},
              "report": report}  # fmt: skip
    store_results(RESULTS, stored, README_SECTION, markdown(report, stored["args"]))


def print_report(report: dict, args) -> None:
    print(f"\ntrained {args.objective.upper()} for {args.steps} steps of {args.batch_size} in {report['seconds']:.0f} s")
    print(f"train loss: {report['train_loss_first_50']:.3g} (first 50 steps) -> {report['train_loss_last_50']:.3g} "
          f"(last 50); held-out loss {report['loss']:.3g}")  # fmt: skip
    print(f"first-error localization: {report['localization_accuracy']:.1%} of "
          f"{report['flawed_with_known_first_error']} flawed trajectories "
          f"(chance {report['localization_chance']:.1%})")  # fmt: skip
    if "best_of_n" in report:
        print(f"\nBest-of-N accuracy    N   {args.objective.upper():>8}   random   majority vote   oracle")
        for n, row in report["best_of_n"].items():
            print(f"{'':20}{int(n):3d}   {row['best_of_n']:8.1%}   {row['random']:6.1%}   "
                  f"{row['majority_vote']:13.1%}   {row['oracle']:6.1%}")  # fmt: skip
    print(f"\nloss curve, report.json{'' if args.no_save else ' and model'} in {args.out}/")


if __name__ == "__main__":
    main()
