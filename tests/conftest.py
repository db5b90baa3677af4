"""Shared fixtures: fresh random ragged batches, tolerances per dtype, and the backends to test.

Without a GPU, Triton kernels run on CPU tensors through its interpreter, which must be switched
on before triton is first imported.
"""

import os
from dataclasses import dataclass

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import crm_kernels  # noqa: E402

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

# Outputs accumulate in float32 for every input dtype below float64 (SPEC 4), so forward results
# are held to float32 rounding of sums over up to ~5k steps. Gradients are rounded to the logits'
# dtype, so they get that dtype's resolution. The GPU tests use the same bounds: on a GPU the
# float32 Triton kernels' exp is ex2.approx.f32 and their division div.full.f32, which put each
# softplus or sigmoid term within 6e-6 relative of exact (README "Accuracy on GPUs"), inside them.
FORWARD_TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12)}
FORWARD_TOL.update({dt: dict(rtol=2e-5, atol=2e-5) for dt in (torch.float32, torch.bfloat16, torch.float16)})
GRAD_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


def cpu_backends():
    return [b for b in ("cpu", "triton") if crm_kernels._backends.is_available(b, torch.device("cpu"))]


@dataclass
class Batch:
    logits: torch.Tensor  # [N], in the requested dtype
    cu_steps: torch.Tensor  # [B + 1]
    outcome: torch.Tensor  # [B] bool
    first_error: torch.Tensor  # [B] int64, -1 where unknown or correct

    @property
    def lengths(self):
        return self.cu_steps[1:] - self.cu_steps[:-1]


def make_lengths(generator, batch=24, mean=6.0, long_steps=0):
    """Poisson lengths with the edge cases always present: empty, length 1, and optionally one long
    trajectory, at random places."""
    lengths = torch.poisson(torch.full((batch,), mean), generator=generator).long()
    lengths[:3] = torch.tensor([0, 1, 0])
    if long_steps:
        lengths[3] = long_steps
    return lengths[torch.randperm(batch, generator=generator)]


def make_batch(seed, dtype=torch.float32, index_dtype=torch.int64, scale=1.0, batch=24, mean=6.0, long_steps=0,
               device="cpu", lengths=None):  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = make_lengths(generator, batch, mean, long_steps)
    cu_steps = torch.zeros(len(lengths) + 1, dtype=torch.long)
    cu_steps[1:] = lengths.cumsum(0)
    num_steps = int(cu_steps[-1])
    logits = (torch.randn(num_steps, generator=generator, dtype=torch.float64) * scale).to(dtype)
    # Empty trajectories must be correct (an empty flawed one has no L_W).
    outcome = (torch.rand(len(lengths), generator=generator) < 0.5) | (lengths == 0)
    known = (torch.rand(len(lengths), generator=generator) < 0.6) & ~outcome
    first_error = torch.where(
        known, (torch.rand(len(lengths), generator=generator) * lengths).long().clamp(max=lengths - 1), -1
    )
    return Batch(logits.to(device), cu_steps.to(index_dtype).to(device), outcome.to(device), first_error.to(device))


# Every run draws fresh inputs; CRM_TEST_SEED=<n> replays one (the header prints it).
BASE_SEED = int(os.environ.get("CRM_TEST_SEED", str(int.from_bytes(os.urandom(3), "little"))))


def pytest_report_header(config):
    return f"crm_kernels: CRM_TEST_SEED={BASE_SEED}, backends on cpu: {crm_kernels.available_backends('cpu')}"


def _node_seed(request) -> int:
    import zlib

    return (zlib.crc32(request.node.nodeid.encode()) ^ BASE_SEED) & 0x7FFFFFFF


@pytest.fixture
def seed(request):
    """A seed per test and parameter set, derived from the run's base seed."""
    return _node_seed(request)


@pytest.fixture(autouse=True)
def _seeded_global_generator(request):
    """torch's global generator seeded per test from the run's base seed, so that a draw without
    a generator (an upstream gradient, say) replays under CRM_TEST_SEED wherever the test runs and
    whatever ran before it on that worker."""
    torch.manual_seed(_node_seed(request) ^ 0x5EED)
