"""The baseline objectives of SPEC 7 (prm_loss, orm_loss, pqm_loss): the same classes of tests as
crm_loss. Every backend against the float64 reference on fresh ragged batches (empty trajectories,
length 1, long ones) in every dtype, extreme logits, the reductions, PQM against its official code,
the bad-input rules, opcheck, fp64 gradcheck, torch.compile and double backward.

On CPU the backends are "cpu" (C++), "triton" (its interpreter) and "torch" (eager); the CUDA
backend has no kernels for these, and naming it is refused, naming the op."""

import pytest
import torch

import crm_kernels
from conftest import DTYPES, FORWARD_TOL, GRAD_TOL, make_batch
from crm_kernels import reference

BACKENDS = [b for b in ("cpu", "triton", "torch") if crm_kernels._backends.is_available(b, torch.device("cpu"))]
OBJECTIVES = ["prm", "orm", "pqm"]


def nonempty_batch(seed, dtype, scale=1.0, long_steps=0):
    """A ragged batch without empty trajectories (ORM rejects them), lengths 1 and long included."""
    batch = make_batch(seed, dtype, scale=scale, long_steps=long_steps)
    generator = torch.Generator().manual_seed(seed)
    lengths = batch.lengths.clamp(min=1)
    return make_batch(seed, dtype, scale=scale, lengths=lengths), generator


def labels_for(objective, batch, generator):
    """The objective's labels for a batch: soft and hard step labels, outcomes, first errors."""
    if objective == "prm":
        soft = torch.rand(batch.logits.numel(), generator=generator, dtype=torch.float64)
        return torch.where(torch.rand(soft.shape, generator=generator) < 0.5, soft.round(), soft)
    if objective == "orm":
        return batch.outcome
    return batch.first_error


def call(objective, logits, cu_steps, labels, **kwargs):
    if objective == "prm":
        return crm_kernels.prm_loss(logits, cu_steps, labels, **kwargs)
    if objective == "orm":
        return crm_kernels.orm_loss(logits, cu_steps, labels, **kwargs)
    return crm_kernels.pqm_loss(logits, cu_steps, labels, **kwargs)


def float64_reference(objective, logits, cu_steps, labels, reduction="none"):
    """The SPEC 7 formulas on float64 logits: the per-trajectory loop for PQM, the elementwise
    forms for the others."""
    x = logits.detach().double().requires_grad_()
    if objective == "prm":
        loss = reference.prm_loss_reference(x, labels.double(), reduction)
    elif objective == "orm":
        loss = reference.orm_loss_reference(x, cu_steps, labels, reduction)
    else:
        loss = reference.pqm_loss_loop(x, cu_steps, labels, reduction=reduction)
    return loss, x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_matches_float64_reference(backend, objective, dtype, scale, seed):
    batch, generator = nonempty_batch(seed, dtype, scale, long_steps=700)
    labels = labels_for(objective, batch, generator)
    if objective == "prm":
        labels = labels.to(dtype)  # the targets in the logits' dtype, as a model's batch holds them
    logits = batch.logits.clone().requires_grad_()
    losses = call(objective, logits, batch.cu_steps, labels, reduction="none", backend=backend)
    upstream = torch.rand(losses.shape, generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad(losses, logits, upstream.to(losses.dtype))
    expected, x = float64_reference(objective, batch.logits, batch.cu_steps, labels)
    (expected_grad,) = torch.autograd.grad(expected, x, upstream)
    assert losses.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype
    torch.testing.assert_close(losses.double(), expected, **FORWARD_TOL[dtype])
    grad_tol = GRAD_TOL[dtype]
    if objective == "pqm" and dtype != torch.float64 and backend == "torch":
        # The eager backend evaluates PQM's gradient in float32 (autograd through logcumsumexp): its
        # terms are e^{x_j - L_k} with L_k = log D_k near the largest logits, each L_k carrying half
        # an ulp of |L_k| (4e-6 at 100, scale 30 here); the bound scales with the largest |L|. The
        # C++ backward runs in float64 and meets the float32 bound.
        largest = float(batch.logits.double().abs().max()) + 8.0
        grad_tol = dict(rtol=max(grad_tol["rtol"], 4 * largest * 2**-24), atol=max(grad_tol["atol"], largest * 2**-24))
    torch.testing.assert_close(grad.double(), expected_grad, **grad_tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_and_normalizer(backend, objective, reduction, seed):
    """"mean" divides by N for PRM and by B otherwise; a normalizer (number or tensor) replaces it."""
    batch, generator = nonempty_batch(seed, torch.float64)
    labels = labels_for(objective, batch, generator)
    per_unit = call(objective, batch.logits, batch.cu_steps, labels, reduction="none", backend=backend)
    units = batch.logits.numel() if objective == "prm" else len(batch.lengths)
    assert per_unit.shape == (units,)
    expected = per_unit.sum() / (units if reduction == "mean" else 1)
    got = call(objective, batch.logits, batch.cu_steps, labels, reduction=reduction, backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for normalizer in (7.0, torch.tensor(7.0, dtype=torch.float64)):
        normalized = call(objective, batch.logits, batch.cu_steps, labels, reduction=reduction,
                          normalizer=normalizer, backend=backend)  # fmt: skip
        torch.testing.assert_close(normalized, per_unit.sum() / 7.0, rtol=1e-12, atol=1e-12)
    # A batch without trajectories: mean 0, never 0 / 0.
    empty = call(objective, torch.zeros(0), torch.zeros(1, dtype=torch.long), labels[:0].float()
                 if objective == "prm" else labels[:0], backend=backend)  # fmt: skip
    assert empty.item() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_extreme_logits_stay_finite(backend, dtype):
    """|x| up to 1e4 in every dtype: finite losses and gradients (the official PQM code gives NaN
    at logits of 100 in float32)."""
    logits = torch.tensor([1e4, -1e4, 100.0, -100.0, 0.0, 1e4, 1e4, -1e4, -1e4, 50.0], dtype=dtype)
    cu_steps = torch.tensor([0, 2, 5, 7, 10])
    inputs = {
        "prm": torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.3], dtype=dtype),
        "orm": torch.tensor([1, 0, 0, 1]),
        "pqm": torch.tensor([1, -1, 0, 2]),
    }
    for objective, labels in inputs.items():
        x = logits.clone().requires_grad_()
        losses = call(objective, x, cu_steps, labels, reduction="none", backend=backend)
        (grad,) = torch.autograd.grad(losses.sum(), x)
        assert torch.isfinite(losses).all() and torch.isfinite(grad).all(), (objective, losses, grad)
        expected, x64 = float64_reference(objective, logits, cu_steps, labels)
        torch.testing.assert_close(losses.double(), expected, rtol=1e-5, atol=1e-5)


def official_ranking_loss(rewards, labels, has_neg, zeta=4.0):
    """PQM's `ranking_loss` (WindyLee0822/Process_Q_Model, train_main.py), restated for one padded
    row per trajectory: labels 1 for correct steps, 0 for wrong ones; has_neg whether any is wrong.
    It exponentiates directly and adds 1e-5 inside each denominator."""
    ones = torch.ones(rewards.shape[0], 1, dtype=rewards.dtype)
    pos_exp = torch.where(labels == 1, rewards.exp(), 0)
    neg_sum = torch.where(labels == 0, (rewards + zeta).exp(), 0).sum(-1)
    pos_cumsum = torch.cat([ones, pos_exp], dim=1).cumsum(-1)[:, :-1]
    pos_cumsum = torch.cat([torch.zeros_like(ones), pos_cumsum], dim=-1)
    current = torch.cat([ones, torch.where(labels == 1, pos_exp, 1)], dim=-1)
    loss = -torch.log(current / (current + pos_cumsum + neg_sum[..., None] + 1e-5))
    counted = torch.cat([has_neg[..., None], labels], dim=-1) == 1
    return torch.where(counted, loss, 0).sum(-1) / counted.sum(-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("margin", [4.0, 1.5])
def test_pqm_matches_the_official_code(backend, margin, seed):
    """Within the 1e-5 the official code adds inside each D (each term moves by at most 1e-5)."""
    batch, generator = nonempty_batch(seed, torch.float64, scale=2.0)
    first_error = batch.first_error.clone()
    first_error[torch.rand(first_error.shape, generator=generator) < 0.3] = 0  # some start wrong
    ours = crm_kernels.pqm_loss(batch.logits, batch.cu_steps, first_error, margin=margin, reduction="none",
                                backend=backend)  # fmt: skip
    bounds = batch.cu_steps.tolist()
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        z = int(first_error[i]) if first_error[i] >= 0 else end - start
        labels = (torch.arange(end - start) < z).long()[None]
        official = official_ranking_loss(batch.logits[start:end][None], labels, torch.tensor([int(z < end - start)]),
                                         margin)  # fmt: skip
        torch.testing.assert_close(ours[i], official[0], rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_reaches_only_its_trajectory(backend):
    logits = torch.tensor([0.5, float("nan"), 1.0, -1.0, 2.0])
    cu_steps = torch.tensor([0, 2, 5])
    prm = crm_kernels.prm_loss(logits, cu_steps, torch.full((5,), 0.5), reduction="none", backend=backend)
    assert prm.isnan().tolist() == [False, True, False, False, False]
    orm = crm_kernels.orm_loss(logits, cu_steps, torch.tensor([1, 0]), reduction="none", backend=backend)
    assert orm.isnan().tolist() == [True, False]
    pqm = crm_kernels.pqm_loss(logits, cu_steps, torch.tensor([-1, 1]), reduction="none", backend=backend)
    assert pqm.isnan().tolist() == [True, False]


def test_empty_trajectories():
    """PRM and PQM take them (no steps: no PRM terms; PQM loss 0, gradient 0); ORM rejects them."""
    logits, cu_steps = torch.tensor([0.3, -0.2], requires_grad=True), torch.tensor([0, 0, 2, 2])
    for backend in BACKENDS:
        pqm = crm_kernels.pqm_loss(logits, cu_steps, torch.tensor([-1, 1, -1]), reduction="none", backend=backend)
        assert pqm[0].item() == 0.0 and pqm[2].item() == 0.0 and pqm[1].item() > 0
        (grad,) = torch.autograd.grad(pqm[0] + pqm[2], logits)
        assert not grad.any()
        assert crm_kernels.prm_loss(logits, cu_steps, torch.ones(2), backend=backend).isfinite()
        with pytest.raises(ValueError, match="orm_loss reads each trajectory's last step.*trajectory 0 has no steps"):
            crm_kernels.orm_loss(logits, cu_steps, torch.tensor([1, 0, 1]), backend=backend)


def test_bad_input_is_named():
    logits, cu_steps = torch.randn(5), torch.tensor([0, 2, 5])
    cases = [
        (lambda: crm_kernels.prm_loss(logits, cu_steps, torch.tensor([0.0, 1.0, 1.5, 0.0, 0.0])),
         ValueError, r"step_labels must be in \[0, 1\]: step_labels\[2\] = 1.5"),
        (lambda: crm_kernels.prm_loss(logits, cu_steps, torch.tensor([0.0, float("nan"), 1.0, 0.0, 0.0])),
         ValueError, r"step_labels must be in \[0, 1\]: step_labels\[1\] = nan"),
        (lambda: crm_kernels.prm_loss(logits, cu_steps, torch.ones(5, dtype=torch.long)),
         TypeError, "step_labels must be a floating tensor"),
        (lambda: crm_kernels.prm_loss(logits, cu_steps, torch.ones(4)), ValueError, "step_labels must have"),
        (lambda: crm_kernels.prm_loss(logits, cu_steps, None), TypeError, "step_labels must be a torch.Tensor"),
        (lambda: crm_kernels.orm_loss(logits, cu_steps, torch.tensor([1, 2])),
         ValueError, r"outcome must be 0 or 1: outcome\[1\] = 2"),
        (lambda: crm_kernels.orm_loss(logits, cu_steps, torch.tensor([1.0, 0.0])), TypeError, "outcome must be bool"),
        (lambda: crm_kernels.orm_loss(logits, cu_steps, torch.tensor([1])), ValueError, "outcome must have"),
        (lambda: crm_kernels.pqm_loss(logits, cu_steps, torch.tensor([2, -1])),
         ValueError, r"first_error must be in \[-1, n_i\): first_error\[0\] = 2, n_0 = 2"),
        (lambda: crm_kernels.pqm_loss(logits, cu_steps, torch.tensor([-2, -1])),
         ValueError, r"first_error must be in \[-1, n_i\): first_error\[0\] = -2"),
        (lambda: crm_kernels.pqm_loss(logits, cu_steps, None), ValueError, "first_error is required"),
        (lambda: crm_kernels.pqm_loss(logits, cu_steps, torch.tensor([0, 1]), margin=float("nan")),
         ValueError, "margin must be a finite number"),
        (lambda: crm_kernels.pqm_loss(logits, cu_steps, torch.tensor([0, 1]), margin=True),
         ValueError, "margin must be a finite number"),
        (lambda: crm_kernels.pqm_loss(logits, torch.tensor([0, 3, 2]), torch.tensor([0, 1])),
         ValueError, "cu_steps must be non-decreasing"),
        (lambda: crm_kernels.prm_loss(logits, cu_steps, torch.rand(5), reduction="avg"), ValueError, "reduction must be"),
        (lambda: crm_kernels.orm_loss(logits, cu_steps, torch.tensor([1, 0]), normalizer=0.0),
         ValueError, "normalizer must be > 0"),
        (lambda: crm_kernels.orm_loss(logits.long(), cu_steps, torch.tensor([1, 0])), TypeError, "logits must be"),
    ]  # fmt: skip
    for run, error, message in cases:
        with pytest.raises(error, match=message):
            run()


def test_a_backend_without_the_kernel_is_refused(monkeypatch):
    """The registry knows which backend implements which op (the CUDA backend has no kernels for
    these): naming one that does not says so; "auto" takes the first that does."""
    from crm_kernels import _backends

    monkeypatch.setitem(_backends._IMPLEMENTS, "cpu", ("log_survival", "crm_loss"))
    _backends.forget_availability()
    try:
        if "cpu" in crm_kernels.available_backends("cpu"):
            with pytest.raises(ValueError, match=r"backend 'cpu' is not available for prm_loss on cpu \(the cpu "
                                                 r"backend has no prm_loss kernel\)"):  # fmt: skip
                crm_kernels.prm_loss(torch.randn(3), torch.tensor([0, 3]), torch.rand(3), backend="cpu")
        assert _backends.resolve("auto", torch.device("cpu"), "pqm_loss") != "cpu"
    finally:
        monkeypatch.undo()
        _backends.forget_availability()
    assert _backends.resolve("auto", torch.device("cpu"), "pqm_loss") == crm_kernels.available_backends("cpu")[0]
    assert "prm_loss" not in _backends._IMPLEMENTS["cuda"]


def small_batch(seed):
    batch = make_batch(seed, torch.float64, lengths=torch.tensor([3, 1, 4, 2, 1]))
    generator = torch.Generator().manual_seed(seed)
    return batch, generator


def private_op_args(objective, batch, generator, normalizer, backend):
    logits = batch.logits.clone().requires_grad_()
    labels = labels_for(objective, batch, generator)
    if objective == "pqm":
        return torch.ops.crm_kernels._pqm_loss.default, (logits, batch.cu_steps, labels, 2.5, normalizer, backend, True)
    op = torch.ops.crm_kernels._prm_loss.default if objective == "prm" else torch.ops.crm_kernels._orm_loss.default
    return op, (logits, batch.cu_steps, labels, normalizer, backend, True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_opcheck(backend, objective, seed):
    batch, generator = small_batch(seed)
    for normalizer in (None, 3.0):
        torch.library.opcheck(*private_op_args(objective, batch, generator, normalizer, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_gradcheck_float64(backend, objective, seed):
    batch, generator = small_batch(seed)
    labels = labels_for(objective, batch, generator)
    logits = batch.logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: call(objective, x, batch.cu_steps, labels, reduction="none", backend=backend), (logits,)
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_double_backward_is_refused(backend, objective, seed):
    batch, generator = small_batch(seed)
    logits = batch.logits.clone().requires_grad_()
    loss = call(objective, logits, batch.cu_steps, labels_for(objective, batch, generator), backend=backend)
    with pytest.raises(RuntimeError, match=f"{objective}_loss: double backward is not supported"):
        torch.autograd.grad(loss, logits, create_graph=True)
    (gradient,) = torch.autograd.grad(loss, logits)  # the first derivative still works
    assert gradient.isfinite().all()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_training_step(backend, objective, compiler, seed):
    """A training step through each objective under torch.compile(fullgraph=True), validation on:
    no graph break, the loss and the head's gradient as in eager. The kernel backends only, as for
    crm_loss (tests/test_library.py): the eager backend's backward is torch.func.vjp, which does not
    run on the fake tensors AOT autograd traces the backward with."""
    torch._dynamo.reset()
    batch, generator = nonempty_batch(seed, torch.float32)
    labels = labels_for(objective, batch, generator)
    labels = labels.float() if objective == "prm" else labels
    features = torch.randn(batch.logits.numel(), 8, generator=generator)

    def step(model):
        loss = call(objective, model(features).squeeze(-1), batch.cu_steps, labels, backend=backend)
        loss.backward()
        return loss.detach()

    eager_model, compiled_model = torch.nn.Linear(8, 1), torch.nn.Linear(8, 1)
    compiled_model.load_state_dict(eager_model.state_dict())
    eager_loss = step(eager_model)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled_loss = torch.compile(step, backend=compiler, fullgraph=True)(compiled_model)
    torch.testing.assert_close(compiled_loss, eager_loss)
    torch.testing.assert_close(compiled_model.weight.grad, eager_model.weight.grad)


def test_backends_agree_on_bits_across_thread_counts(seed):
    """The C++ kernels' results do not depend on the number of threads."""
    if "cpu" not in BACKENDS:
        pytest.skip("the C++ extension is not built")
    batch, generator = nonempty_batch(seed, torch.float32, long_steps=40_000)
    results = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            row = []
            for objective in OBJECTIVES:
                labels = labels_for(objective, batch, torch.Generator().manual_seed(seed))
                labels = labels.float() if objective == "prm" else labels
                logits = batch.logits.clone().requires_grad_()
                loss = call(objective, logits, batch.cu_steps, labels, backend="cpu")
                loss.backward()
                row += [loss.detach(), logits.grad]
            results.append(row)
        finally:
            torch.set_num_threads(previous)
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reduction_is_the_ordered_sum_of_every_backend(dtype, seed):
    """Past 8192 values the ordered sum goes by blocks (summed in parallel on CPU): the C++
    reduction gives the bits of crm_kernels._numerics.ordered_sum, which the Triton and eager
    backends use, and a left-to-right float64 sum to rounding."""
    from crm_kernels._numerics import SUM_BLOCK, ordered_sum

    if "cpu" not in BACKENDS:
        pytest.skip("the C++ extension is not built")
    generator = torch.Generator().manual_seed(seed)
    batch = 2 * SUM_BLOCK + 123
    cu_steps = torch.arange(batch + 1) * 2
    logits = (torch.randn(2 * batch, generator=generator, dtype=torch.float64) * 3).to(dtype)
    outcome = torch.rand(batch, generator=generator) < 0.5
    per_trajectory = crm_kernels.orm_loss(logits, cu_steps, outcome, reduction="none", backend="cpu")
    summed = crm_kernels.orm_loss(logits, cu_steps, outcome, reduction="sum", backend="cpu")
    assert torch.equal(summed, ordered_sum(per_trajectory))
    expected = per_trajectory.double().cumsum(0)[-1]
    torch.testing.assert_close(summed.double(), expected, rtol=1e-7 if dtype == torch.float32 else 1e-14, atol=0)
