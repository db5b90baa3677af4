"""crm_kernels.rl and the segmented scans under it, against per-sample Python loops.

Every test runs twice: through the one-pass C++ scans (csrc/cpu/scan.cpp, what CPU tensors get)
and through the portable doubling scans (what GPUs and differentiable inputs get)."""


import pytest
import torch
from conftest import make_batch

import crm_kernels
from crm_kernels import _backends, reference, rl, segment


@pytest.fixture(autouse=True, params=["one_pass", "doubling"])
def scan_path(request, monkeypatch):
    if request.param == "one_pass":
        if not _backends.has_cpu_scans():
            pytest.skip("the C++ extension is not built")
    else:
        monkeypatch.setitem(_backends._SCANS_ON, "cpu", ())
    return request.param


def test_one_pass_scans_are_built_with_the_extension(scan_path):
    if scan_path == "one_pass" and "cpu" in crm_kernels.available_backends(torch.device("cpu")):
        assert _backends.has_cpu_scans()
    values = torch.randn(5)
    assert _backends.scan_backend(values) == ("cpu" if scan_path == "one_pass" else None)
    assert _backends.scan_backend(values.requires_grad_()) is None  # gradients take the torch scans


def test_scans_are_differentiable_on_the_torch_path(scan_path):
    values = torch.randn(12, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([0, 5, 5, 12])
    torch.autograd.gradcheck(lambda v: segment.segment_reverse_discounted_sum(v, offsets, 0.9), (values,))
    torch.autograd.gradcheck(lambda v: segment.segment_cumsum(v, offsets), (values,))


def pieces(values, offsets):
    return [values[s:e].double() for s, e in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def groups_of(seed, count=40, max_size=9, ties=False):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_size, (count,), generator=generator)
    sizes[0] = 1
    cu_groups = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    scores = torch.randn(int(cu_groups[-1]), generator=generator, dtype=torch.float64)
    if ties:
        scores = scores.round()
    return scores, cu_groups


def test_step_rewards_sum_to_log_survival(seed):
    batch = make_batch(seed, torch.float32, batch=40, scale=5.0)
    rewards, outcome_score = rl.step_rewards(batch.logits, batch.cu_steps)
    torch.testing.assert_close(rewards.double(), -reference.softplus(batch.logits.double()), rtol=1e-6, atol=1e-6)
    expected = reference.log_survival_loop(batch.logits.double(), batch.cu_steps)
    last = torch.tensor([p[-1].item() if p.numel() else 0.0 for p in pieces(expected, batch.cu_steps)])
    torch.testing.assert_close(outcome_score.double(), last.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_returns_to_go_match_loop(gamma, dtype, seed):
    batch = make_batch(seed, dtype, batch=40, long_steps=5000)
    got = rl.returns_to_go(batch.logits, batch.cu_steps, gamma)
    expected = []
    for r in pieces(batch.logits, batch.cu_steps):
        running, out = 0.0, []
        for value in reversed(r.tolist()):
            running = value + gamma * running
            out.append(running)
        expected += reversed(out)
    tol = dict(rtol=1e-12, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-4)
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), **tol)


def test_returns_at_gamma_one_are_log_survival_differences(seed):
    batch = make_batch(seed, torch.float64, batch=30)
    rewards, _ = rl.step_rewards(batch.logits, batch.cu_steps)
    got = rl.returns_to_go(rewards, batch.cu_steps)
    log_survival = reference.log_survival_loop(batch.logits, batch.cu_steps)
    expected = []
    for ls in pieces(log_survival, batch.cu_steps):
        before = torch.cat([torch.zeros(1, dtype=torch.float64), ls[:-1]])
        expected.append(ls[-1] - before if ls.numel() else ls)
    torch.testing.assert_close(got, torch.cat(expected), rtol=1e-10, atol=1e-10)


def test_float32_scan_does_not_cancel_on_long_segments():
    # A large reward first, then 20,000 small ones: "total minus prefix" loses the small ones.
    values = torch.cat([torch.tensor([1e4]), torch.full((20_000,), 1e-3)]).float()
    offsets = torch.tensor([0, values.numel()])
    got = segment.segment_cumsum(values, offsets)
    expected = torch.cumsum(values.double(), 0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)
    tail = rl.returns_to_go(values, offsets)[1:]
    torch.testing.assert_close(tail.double(), torch.arange(20_000, 0, -1, dtype=torch.float64) * float(values[1]),
                               rtol=1e-5, atol=0)  # fmt: skip


def test_cumsum_and_reverse_cummin_match_loops(seed):
    batch = make_batch(seed, torch.float32, batch=40, long_steps=700)
    cumsum = segment.segment_cumsum(batch.logits, batch.cu_steps)
    cummin = segment.segment_reverse_cummin(batch.logits, batch.cu_steps)
    expected_sum = torch.cat([p.cumsum(0) for p in pieces(batch.logits, batch.cu_steps)])
    expected_min = torch.cat([p.flip(0).cummin(0).values.flip(0) for p in pieces(batch.logits, batch.cu_steps)])
    torch.testing.assert_close(cumsum.double(), expected_sum, rtol=1e-5, atol=1e-4)
    assert torch.equal(cummin.double(), expected_min)


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae_matches_verl_style_loop(gamma, lam, seed):
    """Padded [B, L] with a response mask, against the reverse loop over tokens that trainers run."""
    generator = torch.Generator().manual_seed(seed)
    batch, length = 12, 40
    rewards = torch.randn(batch, length, generator=generator, dtype=torch.float64)
    values = torch.randn(batch, length, generator=generator, dtype=torch.float64)
    response_lengths = torch.randint(0, length + 1, (batch,), generator=generator)
    response_lengths[0], response_lengths[1] = 0, length
    mask = torch.arange(length)[None, :] < response_lengths[:, None]
    advantages, returns = rl.gae(rewards, values, mask, gamma, lam)
    expected = torch.zeros(batch, length, dtype=torch.float64)
    for row in range(batch):
        running = 0.0
        for t in reversed(range(int(response_lengths[row]))):
            next_value = values[row, t + 1] if t + 1 < response_lengths[row] else 0.0
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            running = delta + gamma * lam * running
            expected[row, t] = running
    torch.testing.assert_close(advantages, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(returns, torch.where(mask, expected + values, 0.0), rtol=1e-10, atol=1e-10)


def test_token_level_round_trip(seed):
    batch = make_batch(seed, torch.float32, batch=20)
    generator = torch.Generator().manual_seed(seed)
    seq_len = 64
    positions = torch.cat([torch.randperm(seq_len, generator=generator)[:n].sort().values for n in batch.lengths.tolist()])
    token_level = rl.to_token_level(batch.logits, batch.cu_steps, positions, seq_len)
    expected = torch.zeros(len(batch.lengths), seq_len)
    for row, (s, e) in enumerate(zip(batch.cu_steps[:-1].tolist(), batch.cu_steps[1:].tolist())):
        for k in range(s, e):
            expected[row, positions[k]] += batch.logits[k]
    assert torch.equal(token_level, expected)
    assert torch.equal(rl.from_token_level(token_level, batch.cu_steps, positions), batch.logits)
    with pytest.raises(ValueError, match=r"step_token_index\[\d+\] = 64 is outside \[0, seq_len = 64\)"):
        rl.to_token_level(batch.logits, batch.cu_steps, torch.full_like(positions, 64), seq_len)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_token_level_adds_steps_ending_at_one_token(dtype, seed):
    """Columns drawn with replacement and in any order, empty rows included: each row's cells are
    the sums of its steps in step order (the same bits as torch's accumulating index_put)."""
    batch = make_batch(seed, dtype, batch=30)
    generator = torch.Generator().manual_seed(seed)
    seq_len = 12
    positions = torch.randint(0, seq_len, batch.logits.shape, generator=generator)
    token_level = rl.to_token_level(batch.logits, batch.cu_steps, positions, seq_len)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    expected = torch.zeros(len(batch.lengths), seq_len, dtype=accumulate)
    for row, (s, e) in enumerate(zip(batch.cu_steps[:-1].tolist(), batch.cu_steps[1:].tolist())):
        for k in range(s, e):
            expected[row, positions[k]] += batch.logits[k].to(accumulate)
    assert token_level.dtype == accumulate
    assert torch.equal(token_level, expected)
    # out=: the same bits written over whatever the buffer held.
    out = torch.full((len(batch.lengths), seq_len), float("nan"), dtype=accumulate)
    assert rl.to_token_level(batch.logits, batch.cu_steps, positions, seq_len, out=out) is out
    assert torch.equal(out, expected)


def test_token_level_rejects_bad_seq_len_and_out():
    values, cu_steps, columns = torch.randn(4), torch.tensor([0, 2, 4]), torch.tensor([0, 1, 0, 2])
    for seq_len in (-1, 2.5, None, True):
        with pytest.raises(ValueError, match="seq_len must be an int >= 0"):
            rl.to_token_level(values, cu_steps, columns, seq_len)
    for out, message in [
        (torch.empty(2, 4, dtype=torch.float64), r"out must be torch.float32 of shape \(2, 3\)"),
        (torch.empty(3, 2), r"out must be torch.float32 of shape \(2, 3\)"),
        (torch.empty(3, 2).t(), "out must be contiguous"),
        ("rows", "out must be a torch.Tensor"),
        (torch.empty(2, 3, requires_grad=True), "out requires a gradient"),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            rl.to_token_level(values, cu_steps, columns, 3, out=out)
    shared = torch.empty(10)
    with pytest.raises(ValueError, match="out shares memory with step_values"):
        rl.to_token_level(shared[:4], cu_steps, columns, 3, out=shared[2:8].view(2, 3))
    with pytest.raises(ValueError, match="out= is not differentiable"):
        rl.to_token_level(values.requires_grad_(), cu_steps, columns, 3, out=torch.empty(2, 3))


@pytest.mark.parametrize("temperature", [None, 0.5, 100.0])
def test_min_form_matches_loop(temperature, seed):
    batch = make_batch(seed, torch.float64, batch=40)
    rewards = -reference.softplus(batch.logits)
    got = rl.min_form(rewards, batch.cu_steps, temperature)
    expected = []
    for r in pieces(rewards, batch.cu_steps):
        if temperature is None:
            expected += [min(r[t:].tolist()) for t in range(r.numel())]
        else:
            weighted = torch.softmax(-r / temperature, 0) * r
            expected += [weighted[t:].sum().item() for t in range(r.numel())]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_soft_min_form_tends_to_the_minimum():
    rewards = torch.tensor([-0.1, -2.0, -0.3], dtype=torch.float64)
    offsets = torch.tensor([0, 3])
    assert rl.min_form(rewards, offsets, 1e-3)[0].item() == pytest.approx(-2.0, abs=1e-6)


def group_loop(scores, cu_groups, method, eps=1e-6):
    out = []
    for g in pieces(scores, cu_groups):
        n = g.numel()
        for s in g.tolist():
            mean = g.mean().item()
            if method == "dr_grpo":
                out.append(s - mean)
            elif method == "rloo":
                out.append(0.0 if n == 1 else s - (g.sum().item() - s) / (n - 1))
            else:
                std = g.std().item() if n > 1 else 1.0
                out.append((s - mean) / (std + eps))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("method", rl.GROUP_METHODS)
@pytest.mark.parametrize("ties", [False, True])
def test_group_advantages_match_loop(method, ties, seed):
    scores, cu_groups = groups_of(seed, ties=ties)
    got = rl.group_advantages(scores, cu_groups, method)
    torch.testing.assert_close(got, group_loop(scores, cu_groups, method), rtol=1e-9, atol=1e-9)


def test_group_advantages_by_hand_and_near_constant_groups():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0])
    cu_groups = torch.tensor([0, 3, 4])
    torch.testing.assert_close(rl.group_advantages(scores, cu_groups, "grpo", eps=0.0), torch.tensor([-1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(rl.group_advantages(scores, cu_groups, "dr_grpo"), torch.tensor([-1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(rl.group_advantages(scores, cu_groups, "rloo"), torch.tensor([-1.5, 0.0, 1.5, 0.0]))
    # Scores near -1e3 differing by 1e-3 (float32): a one-pass variance, E[s^2] - E[s]^2, is all
    # rounding noise at this magnitude; the centred two-pass one gives the true unit-free advantages.
    near = torch.tensor([-1000.0, -1000.001, -999.999, -1000.0], dtype=torch.float32)
    got = rl.group_advantages(near, torch.tensor([0, 4]), "grpo", eps=0.0)
    expected = group_loop(near.double(), torch.tensor([0, 4]), "grpo", eps=0.0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-2, atol=1e-2)


def test_outcome_conditioned_centering_matches_loop(seed):
    scores, cu_groups = groups_of(seed)
    outcome = torch.rand(scores.numel(), generator=torch.Generator().manual_seed(seed)) < 0.5
    got = rl.outcome_conditioned_centering(scores, cu_groups, outcome)
    expected = scores.clone()
    for s, e in zip(cu_groups[:-1].tolist(), cu_groups[1:].tolist()):
        wrong = [i for i in range(s, e) if not outcome[i]]
        if wrong:
            mean = sum(scores[i].item() for i in wrong) / len(wrong)
            for i in wrong:
                expected[i] = scores[i] - mean
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[outcome], scores[outcome])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="method must be one of"):
        rl.group_advantages(torch.ones(2), torch.tensor([0, 2]), "ppo")
    with pytest.raises(ValueError, match="gamma must be a number in"):
        rl.returns_to_go(torch.ones(2), torch.tensor([0, 2]), 1.5)
    with pytest.raises(ValueError, match=r"temperature \(None for the strict form\) must be a number > 0"):
        rl.min_form(torch.ones(2), torch.tensor([0, 2]), -1.0)
    with pytest.raises(ValueError, match=r"cu_groups\[-1\] must equal len\(scores\) = 2"):
        rl.group_advantages(torch.ones(2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="outcome must be a tensor"):
        rl.outcome_conditioned_centering(torch.ones(2), torch.tensor([0, 2]), torch.ones(3))


def test_gae_skips_masked_out_tokens_inside_a_row(seed):
    """A mask with holes (e.g. tool outputs inside a response): the masked tokens of a row, in
    order, are its trajectory."""
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(6, 30, generator=generator, dtype=torch.float64)
    values = torch.randn(6, 30, generator=generator, dtype=torch.float64)
    mask = torch.rand(6, 30, generator=generator) < 0.6
    # What sits under a masked-out token is never read into a result: the C++ scan computes every
    # token and keeps the masked-in ones (four rows side by side, 6 = 4 + 2 here).
    rewards, values = rewards.masked_fill(~mask, float("nan")), values.masked_fill(~mask, float("inf"))
    advantages, returns = rl.gae(rewards, values, mask, 0.9, 0.8)
    expected = torch.zeros_like(rewards)
    for row in range(6):
        kept = mask[row].nonzero()[:, 0].tolist()
        running = 0.0
        for j in reversed(range(len(kept))):
            t = kept[j]
            next_value = values[row, kept[j + 1]] if j + 1 < len(kept) else 0.0
            running = rewards[row, t] + 0.9 * next_value - values[row, t] + 0.9 * 0.8 * running
            expected[row, t] = running
    torch.testing.assert_close(advantages, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(returns, torch.where(mask, expected + values, 0.0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [1, 3, 4, 6, 37])
def test_gae_float32_matches_float64_in_every_row_position(length, seed):
    """float32 rows: the C++ scan walks four rows at a time in vector lanes and the remaining rows
    and the last length % 4 columns one token at a time; every row gets the same bits wherever it
    sits, and the float64 recursion to float32 rounding. Holes in the mask, NaN and inf under them."""
    generator = torch.Generator().manual_seed(seed)
    rows = 11  # two groups of four and a tail of three
    rewards = torch.randn(rows, length, generator=generator) * 10
    values = torch.randn(rows, length, generator=generator)
    mask = torch.rand(rows, length, generator=generator) < 0.7
    for row in (0, 5, 9):  # row 0 in the first group, its copies in the second group and the tail
        rewards[row], values[row], mask[row] = rewards[0], values[0], mask[0]
    rewards, values = rewards.masked_fill(~mask, float("nan")), values.masked_fill(~mask, float("inf"))
    advantages, returns = rl.gae(rewards, values, mask, 0.99, 0.95)
    for row in (5, 9):
        assert torch.equal(advantages[row], advantages[0]) and torch.equal(returns[row], returns[0])
    expected_advantages, expected_returns = rl.gae(rewards.double(), values.double(), mask, 0.99, 0.95)
    assert advantages.dtype == torch.float32
    torch.testing.assert_close(advantages, expected_advantages.float(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(returns, expected_returns.float(), rtol=1e-6, atol=1e-5)
    assert not advantages[~mask].any() and not returns[~mask].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gae_out_writes_the_same_bits_into_the_given_buffers(dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(9, 21, generator=generator, dtype=dtype)
    values = torch.randn(9, 21, generator=generator, dtype=dtype)
    mask = torch.rand(9, 21, generator=generator) < 0.8
    expected = rl.gae(rewards, values, mask, 0.99, 0.95)
    out = (torch.full_like(rewards, float("nan")), torch.full_like(rewards, float("nan")))  # nothing left unwritten
    got = rl.gae(rewards, values, mask, 0.99, 0.95, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_gae_rejects_bad_out_and_arguments():
    rewards, values, mask = torch.randn(4, 8), torch.randn(4, 8), torch.ones(4, 8, dtype=torch.bool)
    fresh = lambda: torch.empty(4, 8)  # noqa: E731
    buffer = torch.empty(2, 4, 8)
    bad_outs = [
        (fresh(), "out must be a pair of tensors"),
        ((fresh(),), "out must be a pair of tensors"),
        ((fresh(), None), "out's returns must be a torch.Tensor"),
        ((torch.empty(4, 9), fresh()), r"out's advantages must be torch.float32 of shape \(4, 8\)"),
        ((fresh(), torch.empty(4, 8, dtype=torch.float64)), "out's returns must be torch.float32"),
        ((torch.empty(8, 4).t(), fresh()), "out's advantages must be contiguous"),
        ((fresh().requires_grad_(), fresh()), "requires a gradient"),
        ((buffer[0], buffer[0]), "out's advantages shares memory with out's returns"),
        ((buffer.view(-1)[4:36].view(4, 8), buffer[0]), "out's advantages shares memory with out's returns"),
        ((fresh(), rewards), "out's returns shares memory with token_rewards"),
        ((values, fresh()), "out's advantages shares memory with values"),
    ]
    for out, message in bad_outs:
        with pytest.raises((ValueError, TypeError), match=message):
            rl.gae(rewards, values, mask, 0.9, 0.9, out=out)
    with pytest.raises(ValueError, match="out= is not differentiable"):
        rl.gae(rewards.requires_grad_(), values, mask, out=(fresh(), fresh()))
    with pytest.raises(ValueError, match=r"token_rewards must be a \[B, L\] tensor, got NoneType"):
        rl.gae(None, values, mask)
    with pytest.raises(ValueError, match=r"token_rewards must be a \[B, L\] tensor, got \(32,\)"):
        rl.gae(torch.randn(32), values, mask)


def test_compiled_scans_pass_opcheck(scan_path):
    """The C++ scans as torch ops: schema (masked_gae_out's mutated outputs), fakes, and tracing."""
    if scan_path != "one_pass":
        pytest.skip("the C++ scans only")
    scans = torch.ops.crm_kernels_C
    values, offsets = torch.randn(12, dtype=torch.float64), torch.tensor([0, 3, 3, 12])
    rewards, critic = torch.randn(5, 7), torch.randn(5, 7)
    mask = torch.rand(5, 7) < 0.7
    calls = [
        (scans.segment_linear_scan.default, (values, offsets, 0.9, True)),
        (scans.segment_reverse_cummin.default, (values, offsets)),
        (scans.segment_sum.default, (values, offsets)),
        (scans.segment_to_rows.default, (values, offsets, torch.arange(12) % 4, 5)),
        (scans.segment_to_rows_out.default, (values, offsets, torch.arange(12) % 4, torch.empty(3, 5, dtype=values.dtype))),
        (scans.masked_gae.default, (rewards, critic, mask, 0.99, 0.95)),
        (scans.masked_gae_out.default, (rewards, critic, mask, 0.99, 0.95, torch.empty(5, 7), torch.empty(5, 7))),
    ]
    for op, args in calls:
        torch.library.opcheck(op, args)


def test_scan_paths_agree_on_nan_empty_segments_and_int32_offsets(monkeypatch):
    values = torch.tensor([3.0, float("nan"), 1.0, 2.0, -1.0, 5.0, 0.5])
    offsets = torch.tensor([0, 0, 4, 4, 7], dtype=torch.int32)
    one_pass = [segment.segment_reverse_cummin(values, offsets), segment.segment_cumsum(values, offsets),
                segment.segment_reverse_discounted_sum(values, offsets, 0.5)]  # fmt: skip
    monkeypatch.setitem(_backends._SCANS_ON, "cpu", ())
    doubling = [segment.segment_reverse_cummin(values, offsets), segment.segment_cumsum(values, offsets),
                segment.segment_reverse_discounted_sum(values, offsets, 0.5)]  # fmt: skip
    for got, expected in zip(one_pass, doubling):
        torch.testing.assert_close(got, expected, equal_nan=True)
    assert torch.isnan(one_pass[0][:2]).all() and one_pass[0][2:].tolist() == [1.0, 2.0, -1.0, 0.5, 0.5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_sum_paths_give_the_same_bits(dtype, seed, monkeypatch):
    """The C++ sum (in order, in float64) and segment_reduce over float64: the same bits, on a long
    segment beside short and empty ones, NaN and inf included."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([0, 1, 200_000, 0, 7, 3])
    values = (torch.randn(int(lengths.sum()), generator=generator, dtype=torch.float64) * 1e3 + 0.1).to(dtype)
    values[200_003], values[200_009] = float("nan"), float("inf")  # in the 7-step segment, and the 3-step one
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    one_pass = segment.segment_sum(values, offsets)
    monkeypatch.setitem(_backends._SCANS_ON, "cpu", ())
    reduced = segment.segment_sum(values, offsets)
    assert one_pass.dtype == dtype and torch.equal(one_pass.isnan(), reduced.isnan())
    assert torch.equal(one_pass.nan_to_num(), reduced.nan_to_num())
    expected = torch.stack([p.double().sum() for p in values.split(lengths.tolist())]).to(dtype)
    torch.testing.assert_close(one_pass, expected, equal_nan=True, rtol=1e-12 if dtype == torch.float64 else 0, atol=0)


def test_scans_compile_without_graph_breaks(scan_path):
    """segment's scans and rl.gae under torch.compile(fullgraph=True): the C++ scans are traced
    through their fakes (csrc/ops.cpp schemas, _backends._register_fakes); without them (the
    doubling path) the longest segment is read from the data, a graph break, so fullgraph refuses."""
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(40, generator=generator, dtype=torch.float64)
    offsets = torch.tensor([0, 0, 7, 8, 30, 40])
    rewards, critic = torch.randn(4, 9, generator=generator), torch.randn(4, 9, generator=generator)
    mask = torch.rand(4, 9, generator=generator) < 0.7

    def scans(values, offsets, rewards, critic, mask):
        return (segment.segment_cumsum(values, offsets, validate=False),
                segment.segment_reverse_discounted_sum(values, offsets, 0.9, validate=False),
                segment.segment_reverse_cummin(values, offsets, validate=False),
                *rl.gae(rewards, critic, mask, 0.99, 0.95))  # fmt: skip

    torch._dynamo.reset()
    compiled = torch.compile(scans, fullgraph=True, backend="aot_eager")
    if scan_path == "doubling":
        with pytest.raises(Exception, match="(?i)graph break|data-dependent|item|unsupported"):
            compiled(values, offsets, rewards, critic, mask)
        return
    for got, expected in zip(compiled(values, offsets, rewards, critic, mask), scans(values, offsets, rewards, critic, mask)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
