"""crm_kernels.scoring against loops and float64 math, on fresh random ragged batches."""

import math

import pytest
import torch
from conftest import make_batch

import crm_kernels
from crm_kernels import reference, scoring


def trajectories(batch):
    bounds = zip(batch.cu_steps[:-1].tolist(), batch.cu_steps[1:].tolist())
    return [batch.logits[start:end].double() for start, end in bounds]


def aggregate_loop(logits, how):
    scores = torch.sigmoid(-logits)
    if how == "log_survival":
        return -reference.softplus(logits).sum().item()
    if logits.numel() == 0:
        return 1.0
    return {"min": scores.min(), "last": scores[-1], "mean": scores.mean(), "product": scores.prod()}[how].item()


@pytest.mark.parametrize("how", scoring.AGGREGATIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_aggregations_match_loop(how, dtype, seed):
    batch = make_batch(seed, dtype, batch=40, scale=3.0)
    values = batch.logits if how == "log_survival" else scoring.step_scores(batch.logits)
    got = scoring.aggregate(values, batch.cu_steps, how)
    expected = torch.tensor([aggregate_loop(x, how) for x in trajectories(batch)], dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got.double(), expected, **tol)


def test_survival_product_equals_log_survival(seed):
    batch = make_batch(seed, torch.float64, batch=30)
    product = scoring.aggregate(scoring.step_scores(batch.logits), batch.cu_steps, "product")
    log_survival = scoring.aggregate(batch.logits, batch.cu_steps, "log_survival")
    torch.testing.assert_close(product, log_survival.exp(), rtol=1e-12, atol=1e-300)


def test_best_of_n_matches_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 9, (50,), generator=generator)
    sizes[:2] = torch.tensor([0, 1])
    cu_groups = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    scores = torch.randint(-3, 3, (int(cu_groups[-1]),), generator=generator).float()  # ties
    scores[::7] = float("nan")
    got = scoring.best_of_n(scores, cu_groups)
    expected = []
    for start, end in zip(cu_groups[:-1].tolist(), cu_groups[1:].tolist()):
        best, best_index = -math.inf, -1
        for i in range(start, end):
            value = -math.inf if math.isnan(scores[i]) else scores[i].item()
            if best_index < 0 or value > best:
                best, best_index = value, i
        expected.append(best_index)
    assert got.tolist() == expected


def test_top_k_matches_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 7, (30,), generator=generator)
    cu_groups = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    scores = torch.randint(0, 4, (int(cu_groups[-1]),), generator=generator).double()
    kept, cu_kept = scoring.top_k(scores, cu_groups, k=3)
    expected = []
    for start, end in zip(cu_groups[:-1].tolist(), cu_groups[1:].tolist()):
        members = sorted(range(start, end), key=lambda i: (-scores[i].item(), i))
        expected += members[:3]
    assert kept.tolist() == expected
    assert cu_kept.diff().tolist() == sizes.clamp(max=3).tolist()


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_first_error_probability_matches_float64(scale, seed):
    batch = make_batch(seed, torch.float32, batch=30, scale=scale)
    got = scoring.log_first_error_probability(batch.logits, batch.cu_steps)
    expected, located = [], []
    for x in trajectories(batch):
        survival_before = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(-reference.softplus(x), 0)[:-1]])
        log_p = survival_before - reference.softplus(-x)
        expected.append(log_p)
        located.append(int(log_p.argmax()) if x.numel() else -1)
    expected = torch.cat(expected)
    # Confident hazards give log p(z) near 0 or far below: compare where it is representable.
    torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=2e-5)
    assert got.isfinite().all()
    assert scoring.most_likely_first_error(batch.logits, batch.cu_steps).tolist() == located


def test_largest_drop_matches_a_loop(seed):
    """The step where each trajectory's prefix score falls most from the one before (1 before the
    first step), ties to the earlier step; on S(t) it is the CRM's most likely first error."""
    batch = make_batch(seed, torch.float64, batch=30, scale=3.0)
    prefix = torch.sigmoid(batch.logits)
    expected = []
    for start, end in zip(batch.cu_steps[:-1].tolist(), batch.cu_steps[1:].tolist()):
        values = [1.0] + prefix[start:end].tolist()
        drops = [values[t] - values[t + 1] for t in range(end - start)]
        expected.append(max(range(len(drops)), key=lambda t: (drops[t], -t)) if drops else -1)
    assert scoring.largest_drop(prefix, batch.cu_steps).tolist() == expected
    survival = torch.exp(crm_kernels.log_survival(batch.logits, batch.cu_steps))
    assert torch.equal(scoring.largest_drop(survival, batch.cu_steps),
                       scoring.most_likely_first_error(batch.logits, batch.cu_steps))
    with pytest.raises(ValueError, match=r"prefix_scores must be probabilities in \[0, 1\], got prefix_scores\[\d+\]"):
        scoring.largest_drop(batch.logits * 10, batch.cu_steps)
    with pytest.raises(ValueError, match="cu_steps"):
        scoring.largest_drop(prefix, batch.cu_steps[:-1] + 1)


def test_first_error_probabilities_sum_to_one_minus_survival(seed):
    batch = make_batch(seed, torch.float64, batch=30, scale=3.0)
    log_p = scoring.log_first_error_probability(batch.logits, batch.cu_steps)
    total = torch.stack([log_p[s:e].logsumexp(0) for s, e in zip(batch.cu_steps[:-1], batch.cu_steps[1:])])
    expected = reference.log1mexp(scoring.aggregate(batch.logits, batch.cu_steps, "log_survival"))
    nonempty = batch.lengths > 0
    torch.testing.assert_close(total[nonempty], expected[nonempty], rtol=1e-10, atol=1e-12)


def test_extend_log_survival_equals_scoring_whole_trajectories(seed):
    """Split every trajectory into a prefix and added steps: extending the prefix scores gives
    the same log S(t) as scoring the whole trajectory at once."""
    batch = make_batch(seed, torch.float64, batch=30)
    lengths = batch.lengths
    generator = torch.Generator().manual_seed(seed)
    prefix_lengths = (torch.rand(len(lengths), generator=generator) * (lengths + 1)).long().clamp(max=lengths)
    pieces = [(x[:p], x[p:]) for x, p in zip(trajectories(batch), prefix_lengths.tolist())]
    prefix_logits = torch.cat([a for a, _ in pieces])
    new_logits = torch.cat([b for _, b in pieces])
    cu_prefix = torch.cat([torch.zeros(1, dtype=torch.long), prefix_lengths.cumsum(0)])
    cu_new = torch.cat([torch.zeros(1, dtype=torch.long), (lengths - prefix_lengths).cumsum(0)])
    prefix_scores = scoring.aggregate(prefix_logits, cu_prefix, "log_survival")

    step_log_survival, totals = scoring.extend_log_survival(prefix_scores, new_logits, cu_new)

    whole = reference.log_survival_loop(batch.logits, batch.cu_steps)
    expected_new = torch.cat([whole[s + p: e] for s, e, p in zip(batch.cu_steps[:-1].tolist(),
                                                                 batch.cu_steps[1:].tolist(), prefix_lengths.tolist())])  # fmt: skip
    torch.testing.assert_close(step_log_survival, expected_new, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(totals, scoring.aggregate(batch.logits, batch.cu_steps, "log_survival"),
                               rtol=1e-12, atol=1e-12)  # fmt: skip


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="how must be one of"):
        scoring.aggregate(torch.ones(2), torch.tensor([0, 2]), "max")
    with pytest.raises(ValueError, match=r"cu_groups\[-1\] must equal len\(scores\) = 3"):
        scoring.best_of_n(torch.ones(3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="k must be a positive int"):
        scoring.top_k(torch.ones(3), torch.tensor([0, 3]), 0)
    with pytest.raises(ValueError, match=r"prefix_log_survival must be \[K\] = \[2\]"):
        scoring.extend_log_survival(torch.zeros(3), torch.ones(3), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match=r"cu_steps\[-1\] must equal"):
        scoring.extend_log_survival(torch.zeros(2), torch.ones(3), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("how", ["min", "last", "mean", "product"])
def test_aggregate_takes_step_scores_not_logits(how, seed):
    """Hazard logits passed as step scores gave NaN ("product") or meaningless numbers."""
    batch = make_batch(seed, torch.float32, scale=3.0)
    logits = batch.logits.clone()
    logits[int(batch.cu_steps[2])] = -4.0  # surely outside [0, 1]
    with pytest.raises(ValueError, match=r"step_values must be probabilities in \[0, 1\], got step_values\[\d+\] = "):
        scoring.aggregate(logits, batch.cu_steps, how)
    scores = scoring.step_scores(batch.logits)
    scores[0] = float("nan")  # NaN is not out of range: it stays in its trajectory
    assert scoring.aggregate(scores, batch.cu_steps, how).isnan().sum() <= 1
    scoring.aggregate(logits, batch.cu_steps, how, validate=False)  # validate=False checks nothing
