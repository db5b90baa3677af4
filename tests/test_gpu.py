"""GPU backends on CUDA tensors against the same float64 references. Marked `gpu`; every test
skips, saying why, where no CUDA device is present."""

import pytest
import torch

import crm_kernels
from crm_kernels import reference
from conftest import DTYPES, FORWARD_TOL, GRAD_TOL, make_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def gpu_backends():
    if not torch.cuda.is_available():
        return ["triton", "cuda"]  # only collected for the skip
    return crm_kernels.available_backends("cuda")


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", [1.0, 10.0, 1e4])
def test_gpu_ops_match_float64(backend, dtype, scale, seed):
    batch = make_batch(seed, dtype, torch.int32, scale, batch=2048, mean=16.0, long_steps=70_000, device="cuda")
    logits = batch.logits.clone().requires_grad_()
    losses = crm_kernels.crm_loss(logits, batch.cu_steps, batch.outcome, batch.first_error, reduction="none",
                                  backend=backend)  # fmt: skip
    upstream = torch.rand(losses.shape, dtype=torch.float64, device="cuda") + 0.5
    (grad,) = torch.autograd.grad(losses, logits, upstream.to(losses.dtype))
    x = batch.logits.double().cpu().requires_grad_()
    cpu = dict(cu_steps=batch.cu_steps.cpu(), outcome=batch.outcome.cpu(), first_error=batch.first_error.cpu())
    expected = reference.crm_loss_padded(x, **cpu, reduction="none")
    (expected_grad,) = torch.autograd.grad((expected * upstream.cpu()).sum(), x)
    torch.testing.assert_close(losses.double().cpu(), expected.detach(), **FORWARD_TOL[dtype])
    torch.testing.assert_close(grad.double().cpu(), expected_grad, **GRAD_TOL[dtype])

    out = crm_kernels.log_survival(logits, batch.cu_steps, backend=backend)
    (grad,) = torch.autograd.grad(out, logits, (upstream[:1].expand(out.shape)).to(out.dtype))
    x = batch.logits.double().cpu().requires_grad_()
    expected = reference.log_survival_padded(x, cpu["cu_steps"])
    (expected_grad,) = torch.autograd.grad(expected.sum() * upstream[0].item(), x)
    torch.testing.assert_close(out.double().cpu(), expected.detach(), **FORWARD_TOL[dtype])
    torch.testing.assert_close(grad.double().cpu(), expected_grad, **GRAD_TOL[dtype])


@pytest.mark.parametrize("backend", gpu_backends())
def test_gpu_gradcheck_float64(backend, seed):
    batch = make_batch(seed, torch.float64, batch=6, lengths=torch.tensor([3, 0, 1, 4, 2, 5]), device="cuda")
    logits = batch.logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: crm_kernels.log_survival(x, batch.cu_steps, backend=backend), (logits,))
    assert torch.autograd.gradcheck(
        lambda x: crm_kernels.crm_loss(x, batch.cu_steps, batch.outcome, batch.first_error, backend=backend), (logits,)
    )


@pytest.mark.parametrize("backend", gpu_backends())
def test_gpu_deterministic_and_graph_capture(backend, seed):
    batch = make_batch(seed, torch.bfloat16, batch=4096, mean=16.0, long_steps=100_000, device="cuda")
    args = (batch.cu_steps, batch.outcome, batch.first_error)

    def step(logits):
        logits.grad = None
        crm_kernels.crm_loss(logits, *args, validate=False, backend=backend).backward()
        return logits.grad

    logits = batch.logits.clone().requires_grad_()
    first, second = step(logits).clone(), step(logits).clone()
    assert torch.equal(first, second)
    # CUDA graph capture needs validate=False (validation syncs).
    static_logits = batch.logits.clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(static_logits)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_logits.grad = None
    with torch.cuda.graph(graph):
        loss = crm_kernels.crm_loss(static_logits, *args, validate=False, backend=backend)
        (captured_grad,) = torch.autograd.grad(loss, static_logits)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured_grad, first)


@pytest.mark.parametrize("backend", gpu_backends())
def test_gpu_compile_fullgraph(backend, seed):
    torch._dynamo.reset()
    batch = make_batch(seed, torch.float32, batch=64, mean=16.0, device="cuda")
    loss_fn = lambda x: crm_kernels.crm_loss(x, batch.cu_steps, batch.outcome, batch.first_error, backend=backend)  # noqa: E731
    eager = batch.logits.clone().requires_grad_()
    compiled = batch.logits.clone().requires_grad_()
    loss_fn(eager).backward()
    torch.compile(loss_fn, fullgraph=True)(compiled).backward()
    torch.testing.assert_close(compiled.grad, eager.grad)


def test_gpu_rl_scans_match_cpu(seed):
    """rl.gae (right-padded and with holes) and returns_to_go on CUDA, through the Triton scan,
    against the CPU kernels."""
    from crm_kernels import _backends, rl, segment

    generator = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(64, 3000, generator=generator), torch.randn(64, 3000, generator=generator)
    prefix = torch.arange(3000)[None, :] < torch.randint(0, 3001, (64, 1), generator=generator)
    holes = torch.rand(64, 3000, generator=generator) < 0.7
    assert _backends.scan_backend(rewards.cuda()) == "triton"
    for mask in (prefix, holes):
        expected = rl.gae(rewards, values, mask, 0.99, 0.95)
        got = rl.gae(rewards.cuda(), values.cuda(), mask.cuda(), 0.99, 0.95)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g.cpu(), e, rtol=1e-4, atol=1e-4)
    lengths = torch.randint(0, 5000, (200,), generator=generator)
    cu_steps = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    step_rewards = -torch.rand(int(cu_steps[-1]), generator=generator)
    torch.testing.assert_close(rl.returns_to_go(step_rewards.cuda(), cu_steps.cuda(), 0.999).cpu(),
                               rl.returns_to_go(step_rewards, cu_steps, 0.999), rtol=1e-4, atol=1e-3)  # fmt: skip


@pytest.mark.parametrize("objective", ["prm", "orm", "pqm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_gpu_baseline_objectives_match_the_cpu_kernels(objective, dtype, scale, seed):
    """The SPEC 7 baselines on CUDA tensors ("auto": Triton) against the C++ kernels on the same
    batch, which tests/test_objectives.py holds to the float64 reference."""
    batch = make_batch(seed, dtype, torch.int32, scale, batch=2048, mean=16.0, long_steps=5_000, device="cuda")
    lengths = batch.lengths.clamp(min=1)  # ORM reads each trajectory's last step
    batch = make_batch(seed, dtype, torch.int32, scale, lengths=lengths.cpu(), device="cuda")
    generator = torch.Generator().manual_seed(seed)
    labels = {"prm": torch.rand(batch.logits.numel(), generator=generator).to(dtype).cuda(), "orm": batch.outcome,
              "pqm": batch.first_error}[objective]  # fmt: skip
    function = {"prm": crm_kernels.prm_loss, "orm": crm_kernels.orm_loss, "pqm": crm_kernels.pqm_loss}[objective]
    results = []
    for device in ("cuda", "cpu"):
        logits = batch.logits.to(device).requires_grad_()
        losses = function(logits, batch.cu_steps.to(device), labels.to(device), reduction="none")
        (grad,) = torch.autograd.grad(losses.sum(), logits)
        results.append((losses.double().cpu(), grad.double().cpu()))
    (gpu_losses, gpu_grad), (cpu_losses, cpu_grad) = results
    torch.testing.assert_close(gpu_losses, cpu_losses, **FORWARD_TOL[dtype])
    torch.testing.assert_close(gpu_grad, cpu_grad, **GRAD_TOL[dtype])
