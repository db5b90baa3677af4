"""A shortened run of python/train_crm.py on its embedded default (well under a minute on CPU)."""

import json

import pytest

pytest.importorskip("transformers")


def test_short_training_run_learns_to_locate_errors(tmp_path):
    import train_crm

    report = train_crm.main(["--steps", "120", "--eval-trajectories", "400", "--eval-problems", "60",
                             "--best-of", "4", "8", "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert report["train_loss_last_50"] < 0.5 * report["train_loss_first_50"]
    # Chance is ~1/4.5 (3 to 6 steps); a model that learned the step hazards is far above it.
    assert report["localization_accuracy"] > report["localization_chance"] + 0.3
    assert report["trajectories_with_known_first_error"] > 100
    for row in report["best_of_n"].values():
        assert row["crm_best_of_n"] > row["random"] + 0.1
        assert row["crm_best_of_n"] <= row["oracle"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert len(saved["losses"]) == 120
    assert (tmp_path / "model" / "crm_config.json").exists()
