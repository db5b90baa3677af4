"""SPEC section 5: every bad-input rule raises ValueError/TypeError naming the argument, before
any kernel runs, on every backend; validate=False skips the value checks without ever making a
kernel read or write out of bounds."""

import pytest
import torch

import crm_kernels
from conftest import cpu_backends

BACKENDS = cpu_backends() + ["torch"]


def good():
    return dict(
        logits=torch.randn(7),
        cu_steps=torch.tensor([0, 2, 2, 7]),
        outcome=torch.tensor([False, True, False]),
        first_error=torch.tensor([1, -1, -1]),
    )


def call(backend, **overrides):
    args = good() | overrides
    return crm_kernels.crm_loss(args.pop("logits"), args.pop("cu_steps"), args.pop("outcome"),
                                args.pop("first_error"), backend=backend, **args)  # fmt: skip


BAD_INPUTS = [
    # (overrides, exception, words the message must contain)
    (dict(logits=torch.randn(7, 1)), ValueError, ["logits", "1-D"]),
    (dict(logits=torch.arange(7)), TypeError, ["logits", "int64"]),
    (dict(logits=[0.0] * 7), TypeError, ["logits", "Tensor"]),
    (dict(cu_steps=torch.tensor([[0, 2, 2, 7]])), ValueError, ["cu_steps", "1-D"]),
    (dict(cu_steps=torch.tensor([0.0, 2.0, 2.0, 7.0])), TypeError, ["cu_steps", "int32 or int64"]),
    (dict(cu_steps=torch.tensor([0, 2, 2, 7], dtype=torch.int16)), TypeError, ["cu_steps", "int16"]),
    (dict(cu_steps=torch.tensor([], dtype=torch.long), outcome=torch.tensor([], dtype=torch.bool),
          first_error=None), ValueError, ["cu_steps", "empty"]),
    (dict(cu_steps=torch.tensor([1, 2, 2, 7])), ValueError, ["cu_steps[0]", "got 1"]),
    (dict(cu_steps=torch.tensor([0, 3, 2, 7])), ValueError, ["cu_steps", "non-decreasing", "cu_steps[2] = 2"]),
    (dict(cu_steps=torch.tensor([0, 2, 2, 6])), ValueError, ["cu_steps[-1]", "7", "got 6"]),
    (dict(outcome=torch.tensor([0, 2, 0])), ValueError, ["outcome", "outcome[1] = 2"]),
    (dict(outcome=torch.tensor([0.0, 1.0, 0.0])), TypeError, ["outcome", "float32"]),
    (dict(outcome=torch.tensor([False, True])), ValueError, ["outcome", "3"]),
    (dict(outcome=torch.tensor([False, False, False])), ValueError, ["flawed", "trajectory 1"]),
    (dict(first_error=torch.tensor([2, -1, -1])), ValueError, ["first_error", "first_error[0] = 2", "n_0 = 2"]),
    (dict(first_error=torch.tensor([-2, -1, -1])), ValueError, ["first_error", "first_error[0] = -2"]),
    (dict(first_error=torch.tensor([1, -1, 3]), outcome=torch.tensor([False, True, True])), ValueError,
     ["first_error", "correct", "first_error[2] = 3"]),
    (dict(first_error=torch.tensor([1.0, -1.0, -1.0])), TypeError, ["first_error", "float32"]),
    (dict(first_error=torch.tensor([1, -1])), ValueError, ["first_error", "3"]),
    (dict(weights=(1.0, 2.0)), TypeError, ["weights"]),
    (dict(reduction="average"), ValueError, ["reduction", "average"]),
    (dict(reduction="none", normalizer=4.0), ValueError, ["normalizer"]),
    (dict(backend="nope"), ValueError, ["backend", "nope", "available"]),
    (dict(backend="cuda"), ValueError, ["backend", "cuda", "not available", "available"]),
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("overrides,exception,words", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_input_is_named(backend, overrides, exception, words):
    overrides = dict(overrides)
    backend = overrides.pop("backend", backend)
    with pytest.raises(exception) as info:
        call(backend, **overrides)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_survival_checks_offsets(backend):
    with pytest.raises(ValueError, match=r"cu_steps\[-1\] must equal len\(logits\) = 5: got 4"):
        crm_kernels.log_survival(torch.randn(5), torch.tensor([0, 4]), backend=backend)
    with pytest.raises(TypeError, match="logits must be float16, bfloat16, float32 or float64"):
        crm_kernels.log_survival(torch.zeros(5, dtype=torch.int32), torch.tensor([0, 5]), backend=backend)


def test_devices_must_match():
    meta_offsets = torch.tensor([0, 7], device="meta")
    with pytest.raises(ValueError, match="cu_steps is on meta but logits is on cpu"):
        crm_kernels.log_survival(torch.randn(7), meta_offsets)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_unvalidated_garbage_stays_in_bounds(backend, seed):
    """validate=False with offsets that break every rule: the kernels clamp what they read, so
    they return (meaningless) numbers of the right shape instead of crashing."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(50, generator=generator)
    for cu_steps in [torch.tensor([5, 80, -30, 10, 10_000]), torch.tensor([0, 60]), torch.tensor([-7, -3]),
                     torch.randint(-100, 100, (9,), generator=generator)]:  # fmt: skip
        batch = cu_steps.numel() - 1
        outcome = torch.randint(-3, 3, (batch,), generator=generator)
        first_error = torch.randint(-10, 100, (batch,), generator=generator)
        x = logits.clone().requires_grad_()
        losses = crm_kernels.crm_loss(x, cu_steps, outcome, first_error, reduction="none", validate=False,
                                      backend=backend)  # fmt: skip
        assert losses.shape == (batch,)
        losses.sum().backward()
        assert x.grad.shape == x.shape
        out = crm_kernels.log_survival(x, cu_steps, validate=False, backend=backend)
        assert out.shape == x.shape
        out.sum().backward()


@pytest.mark.parametrize("normalizer, error, message", [
    (0, ValueError, "normalizer must be > 0"), (-3.0, ValueError, "normalizer must be > 0"),
    (float("nan"), ValueError, "normalizer must be > 0"), (torch.tensor(0.0), ValueError, "normalizer must be > 0"),
    (torch.tensor([1.0, 2.0]), ValueError, "one-element tensor"), ("4", TypeError, "positive number"),
    (True, TypeError, "positive number"),
])  # fmt: skip
def test_normalizer_must_be_a_positive_number(normalizer, error, message):
    """0 gave inf and a negative normalizer a loss whose gradient climbs."""
    args = (torch.randn(6), torch.tensor([0, 2, 6]), torch.tensor([True, False]))
    with pytest.raises(error, match=message):
        crm_kernels.crm_loss(*args, normalizer=normalizer)
    # A tensor's value is read only when validating (reading it syncs the device).
    if isinstance(normalizer, torch.Tensor) and normalizer.numel() == 1:
        crm_kernels.crm_loss(*args, normalizer=normalizer, validate=False)
