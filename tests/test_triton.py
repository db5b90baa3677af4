"""The Triton kernels' own structure: chunks, carries between chunks, and reverse scans, exercised
with a small chunk size so that trajectories cross many chunk boundaries on small inputs (the
interpreter is slow). The op-level tests in test_ops.py run the default chunk size."""

import pytest
import torch

from crm_kernels import reference
from conftest import cpu_backends, make_batch

pytestmark = pytest.mark.skipif("triton" not in cpu_backends(), reason="triton is not installed")


@pytest.mark.parametrize("block", [16, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_carries_across_chunks(block, dtype, seed):
    from crm_kernels import _triton as triton_kernels

    # Lengths straddling chunk edges: long runs over many chunks, empties at edges, singles.
    lengths = torch.tensor([0, 1, block - 1, 0, 0, 5 * block + 3, 1, block, 2, 0, 3 * block, 7])
    batch = make_batch(seed, dtype, scale=3.0, lengths=lengths)
    x64 = batch.logits.double()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)

    expected = reference.log_survival_loop(x64, batch.cu_steps)
    got = triton_kernels.log_survival_forward(batch.logits, batch.cu_steps, block=block)
    torch.testing.assert_close(got.double(), expected, **tol)

    upstream = torch.rand(x64.shape, dtype=torch.float64) + 0.5
    x = x64.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad((reference.log_survival_loop(x, batch.cu_steps) * upstream).sum(), x)
    got_grad = triton_kernels.log_survival_backward(upstream.to(got.dtype), batch.logits, batch.cu_steps, block=block)
    torch.testing.assert_close(got_grad.double(), expected_grad, **(tol if dtype == torch.float64 else dict(rtol=1.6e-2, atol=1e-5)))

    losses, log_survival_total = triton_kernels.crm_loss_forward(
        batch.logits, batch.cu_steps, batch.outcome, batch.first_error, 1.0, 1.0, 1.0, block=block
    )
    expected_losses = reference.crm_loss_loop(x64, batch.cu_steps, batch.outcome, batch.first_error, reduction="none")
    torch.testing.assert_close(losses.double(), expected_losses, **tol)
    torch.testing.assert_close(log_survival_total.double(), expected[batch.cu_steps[1:] - 1].where(lengths > 0, 0.0), **tol)


def test_one_program_per_chunk_not_per_trajectory():
    """The grid depends on the number of steps only: 10,000 one-step trajectories take 10 chunks."""
    from crm_kernels._triton import _segments

    launches = []

    class Recorder:
        def __getitem__(self, grid):
            launches.append(grid)
            return lambda *args, **kwargs: None

    _segments.launch_scan(Recorder(), 10_000, 1, torch.float32, "cpu", 1024)
    assert launches == [(10,), (10,)]  # phase 1 and phase 3; phase 2 is _chunk_carries_kernel


def loop_linear_scan(values, offsets, decay, reverse):
    out = torch.zeros_like(values, dtype=torch.float64)
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        carried = 0.0
        for i in (range(end - 1, start - 1, -1) if reverse else range(start, end)):
            carried = float(values[i]) + decay * carried
            out[i] = carried
    return out


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("decay", [1.0, 0.95, 0.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_linear_scan_carries_across_chunks(reverse, decay, dtype, seed):
    """The one-pass scan of returns-to-go and GAE on GPUs: block 16 and carry block 4, so
    segments cross many chunks and the carries themselves span several blocks."""
    from crm_kernels._triton.scan import segment_linear_scan

    lengths = torch.tensor([0, 1, 15, 0, 83, 1, 16, 2, 0, 48, 7])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(int(offsets[-1]), generator=generator, dtype=torch.float64).to(dtype)
    got = segment_linear_scan(values, offsets, decay, reverse, block=16, carry_block=4)
    assert got.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), loop_linear_scan(values, offsets, decay, reverse), **tol)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("block", [16, 1024], ids=["chunked", "one_chunk"])
def test_linear_scan_keeps_nan_and_inf_inside_their_segment(reverse, block):
    """SPEC 4: a NaN or inf reaches the rest of its own segment and no other, inside a chunk and
    across chunk carries (a restart written as a multiplication by 0 made 0 * NaN = NaN leak)."""
    from crm_kernels._triton.scan import segment_linear_scan

    lengths = torch.tensor([3, 20, 0, 17, 30, 5])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    values = torch.randn(int(offsets[-1]), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    values[1], values[30], values[60] = float("nan"), float("inf"), float("-inf")  # segments 0, 3 and 4
    for decay in (0.9, 1.0):
        got = segment_linear_scan(values, offsets, decay, reverse, block=block, carry_block=4)
        torch.testing.assert_close(got, loop_linear_scan(values, offsets, decay, reverse), rtol=1e-12, atol=1e-12,
                                   equal_nan=True)  # fmt: skip
        assert got[3:23].isfinite().all() and got[70:].isfinite().all()  # segments 1 and 5 untouched


def test_gae_and_returns_route_through_the_triton_scan(monkeypatch, seed):
    """rl.gae's right-padded rows and rl.returns_to_go as they run on GPUs, with the dispatch
    forced onto the Triton scan (interpreted here)."""
    from crm_kernels import _backends, rl, segment
    from crm_kernels._triton import scan

    calls = []
    monkeypatch.setattr(scan, "segment_linear_scan",
                        lambda *args, real=scan.segment_linear_scan, **kw: calls.append(1) or real(*args, **kw))  # fmt: skip
    monkeypatch.setattr(_backends, "scan_backend", lambda *tensors: "triton")
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(5, 37, generator=generator, dtype=torch.float64)
    values = torch.randn(5, 37, generator=generator, dtype=torch.float64)
    mask = torch.arange(37)[None, :] < torch.tensor([0, 1, 37, 20, 9])[:, None]
    advantages, returns = rl.gae(rewards, values, mask, 0.99, 0.9)
    deltas = (rewards + 0.99 * torch.nn.functional.pad((values * mask)[:, 1:], (0, 1)) - values) * mask
    expected = loop_linear_scan(deltas.reshape(-1), torch.arange(0, 5 * 37 + 1, 37), 0.99 * 0.9, True).view(5, 37)
    torch.testing.assert_close(advantages, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(returns, (expected + values) * mask, rtol=1e-10, atol=1e-10)
    step_rewards = torch.randn(30, generator=generator, dtype=torch.float64)
    cu_steps = torch.tensor([0, 4, 4, 30])
    torch.testing.assert_close(rl.returns_to_go(step_rewards, cu_steps, 0.9),
                               loop_linear_scan(step_rewards, cu_steps, 0.9, True), rtol=1e-10, atol=1e-10)  # fmt: skip
    assert len(calls) == 2
