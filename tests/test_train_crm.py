"""python/train_crm.py (CRMTrainer end to end on the embedded task): a shortened run of each
objective, and the README's figures against the committed run of its defaults."""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")


@pytest.mark.parametrize("objective", ["crm", "prm", "orm", "pqm"])
def test_short_training_run_learns_to_locate_errors(objective, tmp_path):
    import train_crm

    report = train_crm.main(["--objective", objective, "--steps", "120", "--eval-trajectories", "400",
                             "--eval-problems", "60", "--best-of", "4", "8", "--out", str(tmp_path),
                             "--no-progress"])  # fmt: skip
    assert report["train_loss_last_50"] < 0.5 * report["train_loss_first_50"]
    # Chance is ~1/4.5 (3 to 6 steps); a model that learned the step hazards is far above it.
    assert report["localization_accuracy"] > report["localization_chance"] + 0.3
    assert report["flawed_with_known_first_error"] > 100
    for row in report["best_of_n"].values():
        assert row["best_of_n"] > row["random"] + 0.1
        assert row["random"] <= row["best_of_n"] <= row["oracle"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert len(saved["losses"]) == 120
    assert (tmp_path / "model" / "crm_config.json").exists()
    assert json.loads((tmp_path / "model" / "crm_config.json").read_text())["objective"] == objective


def test_baselines_that_need_every_first_error_refuse_hidden_ones():
    import train_crm

    with pytest.raises(SystemExit):
        train_crm.parse_args(["--objective", "pqm", "--hidden-fraction", "0.3"])
    assert train_crm.parse_args(["--objective", "prm"]).hidden_fraction == 0.0
    assert train_crm.parse_args([]).hidden_fraction == 0.3


def test_readme_figures_are_the_committed_run():
    import train_crm

    from benchmarks import report

    committed = json.loads(Path(train_crm.RESULTS).read_text())
    readme = Path(train_crm.ROOT) / "README.md"
    assert report.read_section(readme, train_crm.README_SECTION) == train_crm.markdown(
        committed["report"], committed["args"]).rstrip("\n")  # fmt: skip


@pytest.mark.slow
def test_defaults_reproduce_the_committed_run(tmp_path):
    """The README's run, rerun: python/train_crm.py at its defaults gives the committed figures
    (the same run on the same CPU build; a point of tolerance for thread scheduling)."""
    import train_crm

    committed = json.loads(Path(train_crm.RESULTS).read_text())["report"]
    got = train_crm.main(["--out", str(tmp_path), "--no-progress", "--no-save"])
    assert got["flawed_with_known_first_error"] == committed["flawed_with_known_first_error"]
    assert got["localization_accuracy"] == pytest.approx(committed["localization_accuracy"], abs=0.01)
    for n, row in committed["best_of_n"].items():
        for key, value in row.items():
            assert got["best_of_n"][n][key] == pytest.approx(value, abs=0.01), (n, key)
    assert got["loss"] == pytest.approx(committed["loss"], rel=0.05)
