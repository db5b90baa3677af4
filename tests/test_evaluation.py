"""crm_kernels.evaluation (localization and Best-of-N metrics) against plain Python loops, and the
objective-specific first-error rule of ConditionalRewardModel.first_error."""

import random

import pytest
import torch

from crm_kernels import evaluation, scoring


def test_localization_counts_only_known_first_errors(seed):
    generator = torch.Generator().manual_seed(seed)
    step_counts = torch.randint(1, 7, (200,), generator=generator)
    first_error = torch.where(torch.rand(200, generator=generator) < 0.5, -1,
                              (torch.rand(200, generator=generator) * step_counts).long())  # fmt: skip
    predicted = (torch.rand(200, generator=generator) * step_counts).long()
    predicted[::3] = first_error[::3].clamp(min=0)
    known = [i for i in range(200) if first_error[i] >= 0]
    got = evaluation.localization(predicted, first_error, step_counts)
    assert got["flawed_with_known_first_error"] == len(known)
    assert got["localization_accuracy"] == pytest.approx(sum(int(predicted[i] == first_error[i]) for i in known) / len(known))
    assert got["localization_chance"] == pytest.approx(sum(1 / int(step_counts[i]) for i in known) / len(known))
    none_known = evaluation.localization(predicted, torch.full_like(first_error, -1), step_counts)
    assert none_known["flawed_with_known_first_error"] == 0 and none_known["localization_accuracy"] != none_known["localization_accuracy"]


def test_best_of_n_matches_a_loop(seed):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 9) for _ in range(40)]
    scores = torch.tensor([float(rng.choice([0, 1, 2, 3])) for _ in range(sum(sizes))])  # ties
    scores[rng.randrange(len(scores))] = float("nan")
    correct = torch.rand(len(scores), generator=torch.Generator().manual_seed(seed)) < 0.4
    cu_groups = torch.tensor([0] + sizes).cumsum(0)
    picked, mean_right, any_right = [], [], []
    for start, end in zip(cu_groups[:-1].tolist(), cu_groups[1:].tolist()):
        ranked = [(-(s if s == s else float("-inf")), i) for i, s in enumerate(scores[start:end].tolist())]
        picked.append(bool(correct[start + min(ranked)[1]]))  # the best, ties to the first, NaN last
        mean_right.append(correct[start:end].double().mean().item())
        any_right.append(bool(correct[start:end].any()))
    got = evaluation.best_of_n(scores, correct, cu_groups)
    assert got["best_of_n"] == pytest.approx(sum(picked) / 40)
    assert got["random"] == pytest.approx(sum(mean_right) / 40)
    assert got["oracle"] == pytest.approx(sum(any_right) / 40)


def test_best_of_n_curve_takes_the_first_n_and_votes(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(30, 16, generator=generator)
    answers = torch.randint(0, 4, (30, 16), generator=generator)
    correct = answers == 2
    curve = evaluation.best_of_n_curve(scores, correct, [1, 4, 16], answers)
    for n, row in curve.items():
        assert row["best_of_n"] == pytest.approx(correct[torch.arange(30), scores[:, :n].argmax(1)].double().mean().item())
        votes = []
        for p in range(30):
            counts = {a: answers[p, :n].tolist().count(a) for a in set(answers[p, :n].tolist())}
            winner = min(counts, key=lambda a: (-counts[a], a))
            votes.append(winner == 2)
        assert row["majority_vote"] == pytest.approx(sum(votes) / 30)
    assert curve[1]["best_of_n"] == curve[1]["random"] == curve[1]["oracle"]


def test_bad_input_names_the_argument():
    scores, correct = torch.zeros(4), torch.ones(4, dtype=torch.bool)
    with pytest.raises(TypeError, match="correct must be a tensor"):
        evaluation.best_of_n(scores, [True] * 4, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"correct must have the shape of scores, \(4,\), got \(3,\)"):
        evaluation.best_of_n(scores, correct[:3], torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="cu_groups must hold non-empty groups, group 1 is empty"):
        evaluation.best_of_n(scores, correct, torch.tensor([0, 4, 4]))
    with pytest.raises(ValueError, match="cu_groups"):
        evaluation.best_of_n(scores, correct, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"sizes must be ints in \[1, 2\]"):
        evaluation.best_of_n_curve(scores.view(2, 2), correct.view(2, 2), [4])
    with pytest.raises(ValueError, match=r"scores must be \[P, M\]"):
        evaluation.best_of_n_curve(scores, correct, [1])
    with pytest.raises(ValueError, match="step_counts must have the shape of predicted"):
        evaluation.localization(torch.zeros(3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        evaluation.predict(None, None, [], batch_size=0)


@pytest.mark.parametrize("objective", ["crm", "prm", "orm", "pqm"])
@pytest.mark.parametrize("padding_free", [False, True])
def test_predict_is_the_models_ranking_and_first_error(objective, padding_free):
    """predict over batches equals the model on the whole set at once; the first error is argmax
    p(z = t) for CRM and the largest drop of the sigmoid for the baselines."""
    pytest.importorskip("transformers")
    from crm_kernels.data import PRMCollator
    from crm_kernels.tasks import arithmetic

    tokenizer = arithmetic.build_tokenizer()
    model = arithmetic.small_model(tokenizer, seed=2, objective=objective).eval()
    torch.nn.init.normal_(model.value_head.weight, std=0.5)  # spread the untrained scores
    examples = [s.example for s in arithmetic.make_dataset(23, seed=5, mistakes=arithmetic.HARD)]
    predictions = evaluation.predict(model, PRMCollator(tokenizer, arithmetic.STEP_TAG, padding_free=padding_free),
                                     examples, batch_size=7)  # fmt: skip
    batch = PRMCollator(tokenizer, arithmetic.STEP_TAG)(examples)
    with torch.no_grad():
        output = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(predictions.ranking_score, model.ranking_score(output).float(), rtol=1e-5, atol=1e-5)
    if objective == "crm":
        expected = scoring.most_likely_first_error(output.hazard_logits, output.cu_steps)
    else:
        expected = scoring.largest_drop(torch.sigmoid(output.hazard_logits), output.cu_steps)
    assert torch.equal(predictions.first_error_predicted, expected)
    assert torch.equal(predictions.first_error, batch["first_error"])
    assert torch.equal(predictions.step_counts, batch["cu_steps"].diff())
