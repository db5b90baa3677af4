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
    from crm_kernels import triton as triton_kernels

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
    from crm_kernels.triton import _segments

    launches = []

    class Recorder:
        def __getitem__(self, grid):
            launches.append(grid)
            return lambda *args, **kwargs: None

    _segments.launch_scan(Recorder(), 10_000, 1, torch.float32, "cpu", 1024)
    assert launches == [(10,), (10,)]  # phase 1 and phase 3; phase 2 is _chunk_carries_kernel
