"""python/compare_objectives.py: the README's tables against the committed results, and a small
budget of the whole comparison (every objective trained by CRMTrainer and evaluated) in CI."""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")


@pytest.mark.parametrize("task", ["hard", "arithmetic"])
def test_readme_tables_are_the_committed_results(task):
    import compare_objectives

    from benchmarks import report

    committed = json.loads(Path(compare_objectives.RESULTS.format(task=task)).read_text())
    assert committed["task"] == task and committed["objectives"] == list(compare_objectives.OBJECTIVES)
    assert len(committed["seeds"]) >= 3
    section = report.read_section(Path(compare_objectives.ROOT) / "README.md",
                                  compare_objectives.README_SECTION.format(task=task))  # fmt: skip
    assert section == compare_objectives.markdown(committed).rstrip("\n")
    assert Path(compare_objectives.PLOT.format(task=task)).stat().st_size > 0


def test_small_comparison_runs_every_objective(tmp_path):
    import compare_objectives

    output = compare_objectives.main(["--seeds", "0", "1", "--steps", "40", "--batch-size", "32", "--problems", "12",
                                      "--eval-trajectories", "150", "--best-of", "4", "8", "--task", "hard", "--out", str(tmp_path)])  # fmt: skip
    assert set(output["summary"]) == {"crm", "prm", "orm", "pqm"}
    reference = output["runs"]["crm"]
    for objective, runs in output["runs"].items():
        assert [run["seed"] for run in runs] == [0, 1]
        for run, same_data in zip(runs, reference):
            assert len(run["losses"]) == 40 and sum(run["losses"][-5:]) < sum(run["losses"][:5]), objective
            # The held-out data, and so every verifier-free figure, is the seed's, whatever the objective.
            assert run["localization_chance"] == same_data["localization_chance"]
            assert run["flawed_with_known_first_error"] == same_data["flawed_with_known_first_error"] > 20
            for n in ("4", "8"):
                row = run["best_of_n"][n]
                assert row["random"] == same_data["best_of_n"][n]["random"]
                assert row["oracle"] == same_data["best_of_n"][n]["oracle"]
                assert 0 <= row["best_of_n"] <= row["oracle"] <= 1
            assert 0 <= run["beam_search"] <= 1 and 0 <= run["localization_accuracy"] <= 1
        summary = output["summary"][objective]["localization_accuracy"]
        assert summary["min"] <= summary["mean"] <= summary["max"]
    assert (tmp_path / "compare_objectives_hard.json").exists() and (tmp_path / "compare_objectives_hard.png").exists()
    table = compare_objectives.markdown(output)
    # header, random, majority vote, 4 objectives, oracle, then CRM's seed-by-seed wins over each baseline
    assert table.count("\n| ") == 11 and "Best-of-8" in table
    wins = [line for line in table.splitlines() if line.startswith("| CRM ahead of ")]
    assert [line.split(",")[0] for line in wins] == ["| CRM ahead of ORM", "| CRM ahead of PRM", "| CRM ahead of PQM"]
    for line in wins:
        cells = [cell.strip() for cell in line.strip("|").split("|")[1:]]
        assert len(cells) == 4 and all(cell.split(" of ")[1].startswith("2") for cell in cells)  # 2 seeds each


def test_readme_reading_of_the_results_holds():
    """What the README says of the committed tables, checked against them."""
    import compare_objectives

    from crm_kernels.tasks import arithmetic

    def load(task):
        return json.loads(Path(compare_objectives.RESULTS.format(task=task)).read_text())["summary"]

    small = load("arithmetic")
    columns = [("best_of_n", n) for n in ("4", "8", "16", "32", "64")] + [("beam_search", None),
                                                                          ("localization_accuracy", None)]  # fmt: skip

    def figure(objective, column):
        key, n = column
        return small[objective][key][n] if n else small[objective][key]

    for column in columns:  # the same order on every column by the mean
        means = [figure(objective, column)["mean"] for objective in ("crm", "pqm", "prm", "orm")]
        assert means == sorted(means, reverse=True), column

    runs = json.loads(Path(compare_objectives.RESULTS.format(task="arithmetic")).read_text())["runs"]
    assert len(runs["crm"]) == 10

    def crm_ahead(other, column):  # seed by seed
        key, n = column
        value = (lambda run: run["best_of_n"][n]["best_of_n"]) if n else (lambda run: run[key])
        return sum(value(crm) > value(run) for crm, run in zip(runs["crm"], runs[other]))

    for column in columns:
        assert crm_ahead("orm", column) == 10
        assert crm_ahead("prm", column) == (9 if column[0] == "beam_search" else 10)
        assert 3 <= crm_ahead("pqm", column) <= 6 or column[0] == "localization_accuracy"
    assert crm_ahead("pqm", ("localization_accuracy", None)) == 8
    orm, prm, random_pick = small["orm"]["best_of_n"], small["prm"]["best_of_n"], small["crm"]["random"]
    assert orm["8"]["mean"] > random_pick["8"]["mean"] and orm["16"]["mean"] < random_pick["16"]["mean"]
    assert max(prm, key=lambda n: prm[n]["mean"]) == "8"

    hard = load("hard")
    others = [hard[objective]["localization_accuracy"]["min"] for objective in ("crm", "prm", "orm")]
    assert hard["pqm"]["localization_accuracy"]["max"] < min(others)
    for objective in compare_objectives.OBJECTIVES:
        for n in ("8", "16", "32", "64"):
            assert hard[objective]["best_of_n"][n]["mean"] < hard[objective]["random"][n]["mean"], (objective, n)
    for seed in (0, 1, 2):  # the held-out trajectories of each seed: always answering step 0
        flawed = [s for s in arithmetic.make_dataset(2000, seed + 1, mistakes=arithmetic.HARD) if s.first_error >= 0]
        assert sum(s.first_error == 0 for s in flawed) / len(flawed) == pytest.approx(0.35, abs=0.02)
