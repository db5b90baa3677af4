"""pytest-benchmark entries for the core ops, so regressions show up in a standard tool:

    .venv/bin/python -m pytest benchmarks/test_ops_benchmark.py --benchmark-autosave
    .venv/bin/pytest-benchmark compare

Not part of `make test` (which asserts numbers, never timings); `make bench` is the full benchmark.
"""

import pytest
import torch

import crm_kernels
from benchmarks.run import Workload, kernel_backends, make_inputs

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WORKLOADS = {"rl_rollouts": Workload("rl_rollouts", 65536, 16), "small": Workload("small", 64, 8)}


@pytest.fixture(scope="module", params=list(WORKLOADS))
def inputs(request):
    return make_inputs(WORKLOADS[request.param], DEVICE)


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("backend", kernel_backends(DEVICE))
def test_crm_loss_forward_backward(benchmark, inputs, backend):
    logits = inputs.logits.clone().requires_grad_()

    def step():
        logits.grad = None
        crm_kernels.crm_loss(logits, inputs.cu_steps, inputs.outcome, inputs.first_error, backend=backend).backward()
        _sync()

    benchmark(step)


@pytest.mark.parametrize("backend", kernel_backends(DEVICE))
def test_log_survival_forward_backward(benchmark, inputs, backend):
    logits = inputs.logits.clone().requires_grad_()
    upstream = torch.ones(inputs.num_steps, device=DEVICE)

    def step():
        logits.grad = None
        crm_kernels.log_survival(logits, inputs.cu_steps, backend=backend).backward(upstream)
        _sync()

    benchmark(step)
