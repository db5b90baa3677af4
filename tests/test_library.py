"""The ops as torch ops: opcheck, fp64 gradcheck, torch.compile without graph breaks, and the
backend registry."""

import warnings

import pytest
import torch

import crm_kernels
from conftest import cpu_backends, make_batch

KERNEL_BACKENDS = cpu_backends()


def small_batch(seed, dtype=torch.float64):
    return make_batch(seed, dtype, batch=5, mean=3.0, lengths=torch.tensor([3, 0, 1, 4, 2]))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(backend, dtype, seed):
    batch = small_batch(seed, dtype)
    logits = batch.logits.clone().requires_grad_()
    torch.library.opcheck(torch.ops.crm_kernels._log_survival.default, (logits, batch.cu_steps, backend, True))
    for first_error, normalizer in ((batch.first_error, None), (None, 3.0), (batch.first_error, 1.0)):
        torch.library.opcheck(
            torch.ops.crm_kernels._crm_loss.default,
            (logits, batch.cu_steps, batch.outcome, first_error, 1.0, 0.5, 2.0, normalizer, backend, True),
        )


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + ["torch"])
def test_gradcheck_float64(backend, seed):
    batch = small_batch(seed)
    logits = batch.logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: crm_kernels.log_survival(x, batch.cu_steps, backend=backend), (logits,))
    for first_error in (batch.first_error, None):
        assert torch.autograd.gradcheck(
            lambda x: crm_kernels.crm_loss(x, batch.cu_steps, batch.outcome, first_error, weights=(1.0, 0.5, 2.0),
                                           reduction="none", backend=backend),
            (logits,),
        )  # fmt: skip


def training_step(model, features, cu_steps, outcome, first_error, backend):
    logits = model(features).squeeze(-1)
    loss = crm_kernels.crm_loss(logits, cu_steps, outcome, first_error, backend=backend)
    loss = loss + crm_kernels.log_survival(logits, cu_steps, backend=backend).square().mean() * 1e-3
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_training_step(backend, compiler, seed):
    """torch.compile(fullgraph=True) of a step that calls .backward() (Dynamo traces it with
    trace_autograd_ops), validation on: no graph break, same loss and gradients as eager."""
    torch._dynamo.reset()
    batch = make_batch(seed, torch.float32, batch=12, mean=5.0)
    features = torch.randn(batch.logits.numel(), 8)
    eager_model = torch.nn.Linear(8, 1)
    compiled_model = torch.nn.Linear(8, 1)
    compiled_model.load_state_dict(eager_model.state_dict())
    args = (features, batch.cu_steps, batch.outcome, batch.first_error, backend)
    eager_loss = training_step(eager_model, *args)
    step = torch.compile(training_step, backend=compiler, fullgraph=True)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled_loss = step(compiled_model, *args)
    torch.testing.assert_close(compiled_loss, eager_loss)
    torch.testing.assert_close(compiled_model.weight.grad, eager_model.weight.grad)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_compiled_loss_with_eager_backward(backend, seed):
    """The usual pattern: compile the loss, call .backward() outside; AOT autograd then compiles
    the backward graph around crm_loss_backward / log_survival_backward."""
    torch._dynamo.reset()
    batch = make_batch(seed, torch.float32, batch=12, mean=5.0)

    def loss_fn(logits):
        loss = crm_kernels.crm_loss(logits, batch.cu_steps, batch.outcome, batch.first_error, backend=backend)
        return loss + crm_kernels.log_survival(logits, batch.cu_steps, backend=backend).sum() * 1e-2

    eager_logits = batch.logits.clone().requires_grad_()
    compiled_logits = batch.logits.clone().requires_grad_()
    loss_fn(eager_logits).backward()
    torch.compile(loss_fn, backend="inductor", fullgraph=True)(compiled_logits).backward()
    torch.testing.assert_close(compiled_logits.grad, eager_logits.grad)


def test_compiled_op_still_validates():
    """Validation lives inside the op, so a compiled call still rejects bad offsets."""
    torch._dynamo.reset()
    fn = torch.compile(lambda x, cu: crm_kernels.log_survival(x, cu), backend="aot_eager", fullgraph=True)
    with pytest.raises(ValueError, match="cu_steps must be non-decreasing"):
        fn(torch.randn(4), torch.tensor([0, 3, 1, 4]))


def test_available_backends():
    available = crm_kernels.available_backends("cpu")
    assert available[-1] == "torch" and set(available) <= {"cpu", "triton", "torch"}
    assert crm_kernels.available_backends("meta") == ["torch"]
    assert crm_kernels._backends.resolve("auto", torch.device("cpu")) == available[0]


def test_extension_is_built_in_ci():
    """The C++ backend is the point of the CPU path: a suite that silently fell back to the
    reference would prove nothing."""
    assert "cpu" in crm_kernels.available_backends("cpu"), crm_kernels._backends._extension_error()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_no_backend_is_listed_for_cuda_without_cuda():
    """available_backends('cuda') listed ['triton', 'torch'] on a CPU-only build."""
    assert crm_kernels.available_backends("cuda") == []
    with pytest.raises(ValueError, match="no crm_kernels backend runs on cuda"):
        crm_kernels._backends.resolve("auto", torch.device("cuda"))


def test_auto_warns_once_when_it_falls_back_to_padding(monkeypatch):
    """Without the extension, "auto" on a CPU picked the padded reference silently (it tried to
    allocate 20 GB on a skewed batch); now it warns, once, saying why and how to silence it."""
    from crm_kernels import _backends

    monkeypatch.setattr(_backends, "_extension_error", lambda: "the C++ extension is not built (test)")
    monkeypatch.setattr(_backends, "_triton_runs_on", lambda device: False)
    _backends.forget_availability()
    _backends._warn_padded_fallback.cache_clear()
    try:
        args = (torch.randn(5), torch.tensor([0, 2, 5]), torch.tensor([True, False]))
        with pytest.warns(RuntimeWarning, match="falls back to the padded eager reference.*not built"):
            crm_kernels.crm_loss(*args)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            crm_kernels.crm_loss(*args)  # once only
            crm_kernels.crm_loss(*args, backend="torch")  # chosen knowingly: no warning
    finally:
        _backends.forget_availability()
        _backends._warn_padded_fallback.cache_clear()


def test_private_ops_have_one_implementation_for_every_device():
    """The "torch" backend runs wherever torch does (MPS, XPU, ...), so the private ops'
    implementation is registered for every device, as torch's custom_op did, not for CPU and CUDA
    alone; meta tensors get the fakes. No such device is here: the dispatcher is asked instead."""
    for name in ("_log_survival", "_log_survival_backward", "_crm_loss", "_crm_loss_backward"):
        qualname = f"crm_kernels::{name}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CompositeExplicitAutograd"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta"), name
    logits, cu_steps = torch.randn(5, device="meta"), torch.tensor([0, 2, 5], device="meta")
    assert crm_kernels.log_survival(logits, cu_steps, backend="torch", validate=False).shape == (5,)
    loss = crm_kernels.crm_loss(logits, cu_steps, torch.tensor([True, False], device="meta"), backend="torch",
                                validate=False)  # fmt: skip
    assert loss.shape == () and loss.device.type == "meta"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + ["torch"])
def test_double_backward_is_refused_clearly(backend, seed):
    """The backward ops are not differentiable: create_graph=True raises, naming the op, rather
    than returning a gradient that silently has no second derivative."""
    batch = small_batch(seed)
    logits = batch.logits.clone().requires_grad_()
    for name, loss in (
        ("log_survival", crm_kernels.log_survival(logits, batch.cu_steps, backend=backend).sum()),
        ("crm_loss", crm_kernels.crm_loss(logits, batch.cu_steps, batch.outcome, backend=backend)),
    ):
        with pytest.raises(RuntimeError, match=f"{name}: double backward is not supported"):
            torch.autograd.grad(loss, logits, create_graph=True)
        (gradient,) = torch.autograd.grad(loss, logits)  # the first derivative still works
        assert gradient.isfinite().all()


def test_without_the_extension_gradients_fail_clearly():
    """The ops' autograd is C++ (csrc/autograd.cpp). Without the extension the "torch" backend
    still computes, and asking for a gradient raises, saying why; torch's own fallback for an op
    without autograd only warns and returns no gradient. In a fresh interpreter, with the
    extension's import blocked, since registrations are for the process's life."""
    import subprocess
    import sys

    code = """
import sys, warnings, torch
sys.modules["crm_kernels._C"] = None  # import crm_kernels._C now raises ImportError
import crm_kernels
warnings.simplefilter("ignore")  # the padded-fallback warning
x, cu, outcome = torch.randn(5), torch.tensor([0, 2, 5]), torch.tensor([True, False])
expected = crm_kernels.reference.crm_loss_loop(x.double(), cu, outcome, None, reduction="mean")
print(abs(float(crm_kernels.crm_loss(x, cu, outcome)) - float(expected)) < 1e-5)
try:
    crm_kernels.crm_loss(x.requires_grad_(), cu, outcome)
except RuntimeError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    matches_reference, message = result.stdout.strip().splitlines()
    assert matches_reference == "True"
    assert message.startswith("crm_kernels.crm_loss: gradients need the C++ extension: the C++ extension is not built")


def test_import_is_light():
    """`import crm_kernels` pulls in none of the heavy modules (issue 13: at most 0.3 s over
    `import torch`; the time itself is reported by benchmarks.run, not asserted here). Checked in
    a fresh interpreter, since this one has imported everything already."""
    import subprocess
    import sys

    heavy = ["torch._dynamo", "torch._inductor", "transformers", "triton", "crm_kernels._C",
             "crm_kernels.integrations", "crm_kernels.modeling", "crm_kernels._triton"]  # fmt: skip
    code = f"import sys, crm_kernels; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_availability_is_a_constant_for_dynamo():
    """_backends marks _available_on as a constant the way torch.compiler.assume_constant_result
    does, without importing Dynamo at import time; this fails if torch changes that mechanism."""
    from crm_kernels import _backends

    def probe():
        return ()

    torch.compiler.assume_constant_result(probe)
    assert probe._dynamo_marked_constant is True
    assert _backends._available_on._dynamo_marked_constant is True
