"""CRM against the paper's baselines (PRM, ORM, PQM) on the embedded task: same backbone, data and budget.

    python python/compare_objectives.py                           # 4 objectives x 10 seeds, ~5 min on 2 cores
    python python/compare_objectives.py --task hard --steps 600 --seeds 0 1 2   # ~8 min
    python python/compare_objectives.py --seeds 0 --steps 30 --out /tmp/compare  # a quick look
    python python/compare_objectives.py --write                   # also store the results and the README table

For each seed, one training set trains each objective on the same `small_model` backbone from the
same initialization, with `CRMTrainer` under the same budget (python/train_crm.py's recipe,
--steps optimizer steps of --batch-size trajectories, every first wrong step given, since PRM and
PQM need it). Trained to saturation (python/train_crm.py's 600 steps) every objective locates
every slip on the default task, so the comparison is made hard two ways:

- `--task arithmetic` (default) with a budget too small to saturate (60 steps): how much each
  objective learns from the same few trajectories;
- `--task hard` (`arithmetic.HARD`): besides slips in a step's own sum, steps that copy the wrong
  value from the step before or misread the question's operation, which a step does not show alone.

Each model is then evaluated on held-out data of the same seed:

- Best-of-N for N = 4 to 64: per problem, 64 sampled trajectories; the candidate the objective
  ranks first (`ConditionalRewardModel.ranking_score`) is right how often;
- step-level beam search: --beam-width beams, each extended by --expansions sampled next steps,
  the prefixes ranked by the same score, the best finished beam taken;
- first-error localization: on flawed trajectories, how often the objective's predicted first
  wrong step (`ConditionalRewardModel.first_error`) is the true one.

Reported per objective as the mean and the min to max over seeds, beside a random pick, a majority
vote over final answers and the oracle. Writes <out>/compare_objectives_<task>.json and a plot;
--write stores both under benchmarks/results/ and puts the table in the README
(tests/test_compare_objectives.py holds the README to the committed JSON and runs a small budget
of every objective).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time

import torch
import train_crm  # beside this file: the training recipe

from crm_kernels import evaluation, scoring
from crm_kernels.data import PRMCollator, PRMExample
from crm_kernels.tasks import arithmetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "compare_objectives_{task}.json")
PLOT = os.path.join(ROOT, "benchmarks", "results", "compare_objectives_{task}.png")
README_SECTION = "compare-objectives-{task}"  # the README's <!-- compare-objectives-<task>:begin/end --> markers
TASKS = train_crm.TASKS  # the task's variants: the mistakes each has (crm_kernels/tasks/arithmetic.py)
OBJECTIVES = ("orm", "prm", "pqm", "crm")  # the paper's table order, CRM last
NAMES = {"orm": "ORM", "prm": "PRM (Math-Shepherd BCE)", "pqm": "PQM (Q-value ranking)", "crm": "CRM"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arithmetic", choices=TASKS,
                        help="hard: all three kinds of mistake; arithmetic: slips in a step's own sum only (the default task)")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--best-of", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--problems", type=int, default=200, help="held-out problems for Best-of-N and beam search")
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--expansions", type=int, default=4, help="sampled next steps per beam")
    parser.add_argument("--eval-trajectories", type=int, default=2000, help="held-out trajectories for localization")
    parser.add_argument("--out", default="compare_objectives_out")
    parser.add_argument("--write", action="store_true", help="store the results, the plot and the README table")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Training


def train(objective: str, tokenizer, examples: list, args, seed: int):
    """`small_model` under `objective`, trained by CRMTrainer with python/train_crm.py's recipe;
    the model and its loss per step."""
    model = arithmetic.small_model(tokenizer, seed, objective=objective)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = train_crm.make_trainer(model, tokenizer, arithmetic.STEP_TAG, examples, steps=args.steps,
                                         batch_size=args.batch_size, lr=args.lr, seed=seed, output_dir=output_dir)  # fmt: skip
        trainer.train()
    return model.eval(), train_crm.logged_losses(trainer)


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def beam_search(model, collator, problems: list, width: int, expansions: int, seed: int, mistakes) -> dict:
    """Step-level beam search with the task's sampler as the policy: each beam draws `expansions`
    next steps, the distinct prefixes of a problem are ranked by the objective's score and the
    best `width` kept; the answer is the best finished beam's. Against one sampled trajectory."""
    rng = random.Random(seed)
    beams = [[([], problem.start, -1)] for problem in problems]  # (steps, value, first wrong step)
    for index in range(max(len(problem.operations) for problem in problems)):
        active = [i for i, problem in enumerate(problems) if index < len(problem.operations)]
        candidates, cu_groups = [], [0]
        for i in active:
            seen = {}
            for steps, value, first_error in beams[i]:
                for _ in range(expansions):
                    step, written, wrong = arithmetic.write_step(problems[i], index, value, rng, first_error < 0,
                                                                 mistakes)  # fmt: skip
                    seen.setdefault((*steps, step), (written, index if wrong else first_error))
            candidates += [(list(steps), *rest) for steps, rest in seen.items()]
            cu_groups.append(len(candidates))
        examples = [PRMExample(problems[i].question, steps, outcome=first_error < 0)
                    for i, start, end in zip(active, cu_groups[:-1], cu_groups[1:])
                    for steps, _, first_error in candidates[start:end]]  # fmt: skip
        scores = evaluation.predict(model, collator, examples).ranking_score
        kept, cu_kept = scoring.top_k(scores, torch.tensor(cu_groups), width)
        for position, i in enumerate(active):
            beams[i] = [candidates[k] for k in kept[cu_kept[position]: cu_kept[position + 1]].tolist()]
    best_correct = [beams[i][0][2] < 0 for i in range(len(problems))]
    single = [arithmetic.sample(problem, rng, mistakes=mistakes).first_error < 0 for problem in problems]
    return {"beam_search": statistics.fmean(best_correct), "one_sample": statistics.fmean(single)}


def evaluate(model, tokenizer, held_out: dict, args, seed: int) -> dict:
    collator = PRMCollator(tokenizer, arithmetic.STEP_TAG)
    trajectories = held_out["trajectories"]
    predictions = evaluation.predict(model, collator, [s.example for s in trajectories])
    report = evaluation.localization(predictions.first_error_predicted, predictions.first_error,
                                     predictions.step_counts)  # fmt: skip
    report["best_of_n"] = train_crm.best_of_n(model, tokenizer, arithmetic.STEP_TAG, held_out["groups"], args.best_of,
                                              "cpu")  # fmt: skip
    report.update(beam_search(model, collator, held_out["problems"], args.beam_width, args.expansions, seed + 4,
                              TASKS[args.task]))  # fmt: skip
    return report


def held_out_data(args, seed: int) -> dict:
    rng = random.Random(seed + 3)
    return {
        "trajectories": arithmetic.make_dataset(args.eval_trajectories, seed + 1, mistakes=TASKS[args.task]),
        "groups": arithmetic.make_groups(args.problems, max(args.best_of), seed + 2, mistakes=TASKS[args.task])[1],
        "problems": [arithmetic.make_problem(rng) for _ in range(args.problems)],
    }


# ---------------------------------------------------------------------------------------------
# Summary, table and plot


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict], sizes) -> dict:
    """Mean and min to max over seeds of each figure of one objective's runs."""
    summary = {key: spread([run[key] for run in runs])
               for key in ("localization_accuracy", "localization_chance", "beam_search", "one_sample")}  # fmt: skip
    for column in ("best_of_n", "random", "majority_vote", "oracle"):
        summary[column] = {str(n): spread([run["best_of_n"][str(n)][column] for run in runs]) for n in sizes}
    return summary


def cell(figure: dict) -> str:
    return f"{100 * figure['mean']:.1f} ({100 * figure['min']:.1f}-{100 * figure['max']:.1f})"


def markdown(output: dict) -> str:
    """The README table, shaped like the paper's Best-of-N table: accuracy in %, mean (min-max)
    over seeds; then on how many seeds CRM beats each baseline."""
    sizes = [str(n) for n in output["best_of"]]
    summary = output["summary"]
    reference = summary[output["objectives"][0]]  # the baselines' rows do not depend on the verifier
    lines = [f"{len(output['seeds'])} seeds ({', '.join(map(str, output['seeds']))}); each objective trained "
             f"{output['steps']} steps of {output['batch_size']} trajectories on the {output['task']} task; "
             f"{output['problems']} held-out problems; accuracy in %, mean (min-max) over seeds:", "",
             "| verifier | " + " | ".join(f"Best-of-{n}" for n in sizes)
             + f" | beam {output['beam_width']}x{output['expansions']} | first-error localization |",
             "|---|" + "---|" * (len(sizes) + 2)]  # fmt: skip
    lines.append("| random pick | " + " | ".join(cell(reference["random"][n]) for n in sizes)
                 + f" | {cell(reference['one_sample'])} (one sample) | {cell(reference['localization_chance'])} (uniform guess) |")  # fmt: skip
    lines.append("| majority vote | " + " | ".join(cell(reference["majority_vote"][n]) for n in sizes) + " | | |")
    for objective in output["objectives"]:
        figures = summary[objective]
        lines.append(f"| {NAMES[objective]} | " + " | ".join(cell(figures["best_of_n"][n]) for n in sizes)
                     + f" | {cell(figures['beam_search'])} | {cell(figures['localization_accuracy'])} |")  # fmt: skip
    lines.append("| oracle (any right) | " + " | ".join(cell(reference["oracle"][n]) for n in sizes) + " | | |")
    if "crm" in output["objectives"]:  # paired by seed: the same data and initialization
        for other in (objective for objective in output["objectives"] if objective != "crm"):
            columns = [("best_of_n", n) for n in sizes] + [("beam_search", None), ("localization_accuracy", None)]
            lines.append(f"| CRM ahead of {other.upper()}, seeds | "
                         + " | ".join(paired_wins(output["runs"], other, column) for column in columns) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def paired_wins(runs: dict, other: str, column: tuple) -> str:
    """On how many seeds CRM's figure beats `other`'s (and ties it), seed by seed."""
    key, n = column

    def figure(run):
        return run["best_of_n"][n]["best_of_n"] if n else run[key]

    pairs = [(figure(crm), figure(run)) for crm, run in zip(runs["crm"], runs[other], strict=True)]
    ahead, tied = sum(a > b for a, b in pairs), sum(a == b for a, b in pairs)
    return f"{ahead} of {len(pairs)}" + (f" ({tied} tied)" if tied else "")


def plot(output: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = output["best_of"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    for objective in output["objectives"]:
        figures = output["summary"][objective]["best_of_n"]
        mean = [100 * figures[str(n)]["mean"] for n in sizes]
        low = [m - 100 * figures[str(n)]["min"] for m, n in zip(mean, sizes)]
        high = [100 * figures[str(n)]["max"] - m for m, n in zip(mean, sizes)]
        left.errorbar(sizes, mean, yerr=[low, high], marker="o", capsize=3, label=objective.upper())
    reference = output["summary"][output["objectives"][0]]
    for key, style in (("oracle", ":"), ("majority_vote", "--"), ("random", "-.")):
        left.plot(sizes, [100 * reference[key][str(n)]["mean"] for n in sizes], "k" + style, label=key.replace("_", " "))
    left.set_xscale("log", base=2)
    left.set_xticks(sizes, [str(n) for n in sizes])
    left.set_xlabel("N (candidates per problem)")
    left.set_ylabel("Best-of-N accuracy (%)")
    left.legend(fontsize=8)
    objectives = output["objectives"]
    for offset, (key, label) in enumerate((("localization_accuracy", "first-error localization"),
                                           ("beam_search", "beam search"))):  # fmt: skip
        mean = [100 * output["summary"][o][key]["mean"] for o in objectives]
        low = [m - 100 * output["summary"][o][key]["min"] for m, o in zip(mean, objectives)]
        high = [100 * output["summary"][o][key]["max"] - m for m, o in zip(mean, objectives)]
        positions = [i + 0.4 * offset for i in range(len(objectives))]
        right.bar(positions, mean, width=0.4, yerr=[low, high], capsize=3, label=label)
    right.set_xticks([i + 0.2 for i in range(len(objectives))], [o.upper() for o in objectives])
    right.set_ylabel("accuracy (%)")
    right.legend(fontsize=8)
    fig.suptitle(f"{len(output['seeds'])} seeds, {output['steps']} steps each; bars: min to max over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(output: dict) -> None:
    plot(output, PLOT.format(task=output["task"]))
    train_crm.store_results(RESULTS.format(task=output["task"]), output, README_SECTION.format(task=output["task"]),
                            markdown(output))  # fmt: skip


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    tokenizer = arithmetic.build_tokenizer()
    runs = {objective: [] for objective in args.objectives}
    for seed in args.seeds:
        examples = [s.example for s in arithmetic.make_dataset(args.steps * args.batch_size, seed,
                                                               mistakes=TASKS[args.task])]  # fmt: skip
        held_out = held_out_data(args, seed)
        for objective in args.objectives:
            started = time.perf_counter()
            model, losses = train(objective, tokenizer, examples, args, seed)
            report = evaluate(model, tokenizer, held_out, args, seed)
            runs[objective].append({"seed": seed, **report, "losses": losses,
                                    "seconds": time.perf_counter() - started})  # fmt: skip
            print(f"seed {seed} {objective}: localization {report['localization_accuracy']:.3f}, Best-of-"
                  f"{args.best_of[-1]} {report['best_of_n'][str(args.best_of[-1])]['best_of_n']:.3f}, "
                  f"beam {report['beam_search']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    output = {key: getattr(args, key) for key in ("task", "objectives", "seeds", "steps", "batch_size", "lr", "best_of",
                                                  "problems", "beam_width", "expansions", "eval_trajectories")}  # fmt: skip
    output["summary"] = {objective: summarize(runs[objective], args.best_of) for objective in args.objectives}
    output["runs"] = runs
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"compare_objectives_{args.task}.json"), "w") as f:
        json.dump(output, f, indent=1)
    plot(output, os.path.join(args.out, f"compare_objectives_{args.task}.png"))
    print("\n" + markdown(output))
    if args.write:
        write_results(output)
    return output


if __name__ == "__main__":
    main()
