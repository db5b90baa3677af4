"""Which implementation runs: the registry for the ops (availability, "auto") and for the scans
of `segment` and `rl` (a one-pass kernel where one serves the tensors). No layer above this one
names a kernel.

- "torch":  the padded eager reference (crm_kernels._eager over crm_kernels.reference), any device;
            its backward is autograd's (torch.func.vjp of the recomputed forward).
- "cpu":    the C++ kernels of csrc/cpu, CPU tensors; needs the built extension crm_kernels._C.
- "triton": the Triton kernels of crm_kernels/_triton, CUDA tensors (CPU tensors only under
            TRITON_INTERPRET=1, for testing).
- "cuda":   the CUDA kernels of csrc/cuda, CUDA tensors; needs the extension built with CUDA.

Each backend provides <op>_forward and <op>_backward for the ops it implements (_IMPLEMENTS: all of
OPS, except the CUDA backend, which has log_survival and crm_loss only); the torch.library ops of
crm_kernels/ops/ call them, whatever the backend.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

BACKENDS = ("torch", "cpu", "triton", "cuda")

# The ops each backend implements. The baseline objectives of SPEC 7 have no CUDA kernels (issue
# 16): with backend="cuda" they are refused, saying so; "auto" on a GPU takes Triton first anyway.
OPS = ("log_survival", "crm_loss", "prm_loss", "orm_loss", "pqm_loss")
_IMPLEMENTS = {"torch": OPS, "cpu": OPS, "triton": OPS, "cuda": ("log_survival", "crm_loss")}

# "auto" on GPUs. Triton comes first until the CUDA kernels have been run and timed on a GPU: the
# Triton kernels' logic is checked on every CI run (interpreter), the CUDA kernels' only compiled.
GPU_PREFERENCE = ("triton", "cuda", "torch")


@functools.cache
def _extension_error() -> str | None:
    try:
        import crm_kernels._C  # noqa: F401  (registers torch.ops.crm_kernels_C)
    except ImportError as error:
        reason = f"the C++ extension is not built ({error}); run `make build` or `pip install .`"
        from .ops._library import refuse_gradients

        refuse_gradients(reason)  # the ops' Autograd kernels are in the extension
        return reason
    _register_fakes()
    return None


def _register_fakes() -> None:
    """Shapes and dtypes of the compiled ops' outputs (csrc/ops.cpp), for tracing: torch.compile
    and the fake-tensor checks see through them without running a kernel. inputs_are_valid has
    none: its bool is the data's verdict, and it runs only inside the ops' eager validation."""
    from ._numerics import accumulate_dtype, empty_loss

    def register(name):
        return torch.library.register_fake(f"crm_kernels_C::{name}")

    @register("log_survival_forward")
    def _(logits, cu_steps):
        return logits.new_empty(logits.shape, dtype=accumulate_dtype(logits.dtype))

    @register("log_survival_backward")
    def _(grad_log_survival, logits, cu_steps):
        return torch.empty_like(logits)

    @register("crm_loss_forward")
    def _(logits, cu_steps, outcome, first_error, w_survive, w_wrong, w_first_error, normalizer=None):
        log_survival_total = logits.new_empty((cu_steps.shape[0] - 1,), dtype=accumulate_dtype(logits.dtype))
        return empty_loss(log_survival_total, normalizer), log_survival_total

    @register("crm_loss_backward")
    def _(grad_losses, logits, cu_steps, outcome, first_error, log_survival_total, w_survive, w_wrong, w_first_error):
        return torch.empty_like(logits)

    def loss_fake(logits, units, normalizer):
        return logits.new_empty(() if normalizer is not None else (units,), dtype=accumulate_dtype(logits.dtype))

    @register("prm_loss_forward")
    def _(logits, step_labels, normalizer=None):
        return loss_fake(logits, logits.shape[0], normalizer)

    @register("orm_loss_forward")
    def _(logits, cu_steps, outcome, normalizer=None):
        return loss_fake(logits, cu_steps.shape[0] - 1, normalizer)

    @register("pqm_loss_forward")
    def _(logits, cu_steps, first_error, margin, normalizer=None):
        return loss_fake(logits, cu_steps.shape[0] - 1, normalizer)

    for name in ("prm_loss_backward", "orm_loss_backward", "pqm_loss_backward"):
        register(name)(lambda grad_losses, logits, *rest: torch.empty_like(logits))

    @register("segment_linear_scan")
    def _(values, offsets, decay, reverse):
        return torch.empty_like(values)

    @register("segment_reverse_cummin")
    def _(values, offsets):
        return torch.empty_like(values)

    @register("segment_sum")
    def _(values, offsets):
        return values.new_empty((offsets.shape[0] - 1,))

    @register("segment_to_rows")
    def _(values, offsets, columns, seq_len):
        return values.new_empty((offsets.shape[0] - 1, seq_len))

    @register("masked_gae")
    def _(rewards, values, mask, gamma, lam):
        return torch.empty_like(rewards), torch.empty_like(rewards)

    @register("segment_to_rows_out")
    def _(values, offsets, columns, rows):
        return None

    @register("masked_gae_out")
    def _(rewards, values, mask, gamma, lam, advantages, returns):
        return None


def _has_compiled_kernel(dispatch_key: str, op: str = "crm_loss_forward") -> bool:
    return _extension_error() is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"crm_kernels_C::{op}", dispatch_key
    )


def has_cpu_scans() -> bool:
    """Whether the built extension has the one-pass CPU scans (csrc/cpu/scan.cpp)."""
    return _has_compiled_kernel("CPU", "masked_gae")


def _triton_runs_on(device: torch.device) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def is_available(backend: str, device: torch.device) -> bool:
    device = torch.device(device)
    if backend == "torch":
        return True
    if backend == "cpu":
        return device.type == "cpu" and _has_compiled_kernel("CPU")
    if backend == "cuda":
        return device.type == "cuda" and _has_compiled_kernel("CUDA")
    if backend == "triton":
        return _triton_runs_on(device)
    return False


def _per_device_constant(cache: dict[str, tuple[str, ...]]):
    """Decorator: `compute(device_type)` cached in `cache` for the program's life, and a constant
    for torch.compile. What runs where does not change while a program runs, and the dispatcher and
    import queries behind it cannot be traced. The mark is what torch.compiler.assume_constant_result
    sets, without importing torch._dynamo (0.9 s) at `import crm_kernels`; tests/test_library.py
    checks that Dynamo still reads it. (functools.cache would hide the function from the mark.)"""

    def decorate(compute):
        def cached(device_type: str) -> tuple[str, ...]:
            if device_type not in cache:
                cache[device_type] = compute(device_type)
            return cache[device_type]

        cached._dynamo_marked_constant = True
        return cached

    return decorate


_AVAILABLE_ON: dict[str, tuple[str, ...]] = {}


@_per_device_constant(_AVAILABLE_ON)
def _available_on(device_type: str) -> tuple[str, ...]:
    if device_type == "cuda" and not torch.cuda.is_available():
        return ()  # no CUDA tensor can exist: nothing runs on one
    order = GPU_PREFERENCE if device_type == "cuda" else ("cpu", "triton", "torch")
    return tuple(name for name in order if is_available(name, torch.device(device_type)))


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """The backends that can run on `device` (default: CUDA if present, else CPU), fastest first
    as "auto" picks them."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return list(_available_on(torch.device(device).type))


_AVAILABLE_FOR: dict[str, tuple[str, ...]] = {}


@_per_device_constant(_AVAILABLE_FOR)
def _available_for(device_and_op: str) -> tuple[str, ...]:
    """The backends of `_available_on` that implement the op, for "<device type>:<op>"."""
    device_type, op = device_and_op.split(":")
    return tuple(name for name in _available_on(device_type) if op in _IMPLEMENTS[name])


def forget_availability() -> None:
    """Empties the availability caches, for tests that change what the registry can see."""
    _AVAILABLE_ON.clear()
    _AVAILABLE_FOR.clear()


def resolve(backend: str, device: torch.device, op: str = "crm_loss") -> str:
    """The backend to run `op` for tensors on `device`: "auto" is the first available one. When
    that is the padded eager reference because no compiled backend is there, a warning says so once:
    padding allocates B x (longest trajectory), gigabytes on a skewed batch."""
    # The cached tuple itself: this runs on every op call, where building a list and a device cost
    # a microsecond of a small batch's forty.
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    available = _available_for(f"{device_type}:{op}")
    if not available:
        raise ValueError(f"no crm_kernels backend runs on {device}: torch {torch.__version__} sees no such device")
    if backend == "auto":
        if available[0] == "torch" and _available_on(device_type)[0] == "torch":
            _warn_padded_fallback(device_type)
        return available[0]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}; available on {device}: {list(available)}")
    if backend not in available:
        if backend in _available_on(device_type):
            reason = f" (the {backend} backend has no {op} kernel)"
        else:
            reason = f" ({_extension_error()})" if backend in ("cpu", "cuda") and _extension_error() else ""
        raise ValueError(f"backend {backend!r} is not available for {op} on {device}{reason}; available: {list(available)}")
    return backend


@functools.cache
def _warn_padded_fallback(device_type: str) -> None:
    reason = _extension_error() or "no compiled backend for this device"
    warnings.warn(f"crm_kernels: backend='auto' on {device_type} falls back to the padded eager reference, "
                  f"which allocates B x (longest trajectory) and is many times slower: {reason}. "
                  "Pass backend='torch' to choose it knowingly.", RuntimeWarning, stacklevel=4)  # fmt: skip


class _CompiledKernels:
    """The C++/CUDA kernels, behind the same names as the Triton module."""

    def __getattr__(self, name):
        kernel = getattr(torch.ops.crm_kernels_C, name)
        setattr(self, name, kernel)  # found once: every op call asks for its kernel
        return kernel


_COMPILED_KERNELS = _CompiledKernels()


def kernels(backend: str):
    """The module of kernel functions for a backend: its <op>_forward / <op>_backward (see above)."""
    if backend == "triton":
        from crm_kernels import _triton as triton_kernels

        return triton_kernels
    if backend == "torch":
        from crm_kernels import _eager

        return _eager
    return _COMPILED_KERNELS


# ---- the scans of segment.py and rl.py ---------------------------------------------------------
# One-pass kernels: csrc/cpu/scan.cpp on CPU tensors (one thread per segment, sums in float64),
# the Triton linear scan on GPUs. None of them is differentiable: gradients take the callers'
# doubling scans (None here). Under torch.compile the C++ scans are traced through their fakes;
# the Triton scan, launched from Python, is not traceable there and leaves it to the doubling scan.

_SCANS_ON: dict[str, tuple[str, ...]] = {}


@_per_device_constant(_SCANS_ON)
def _scan_kernels_on(device_type: str) -> tuple[str, ...]:
    if device_type == "cpu" and has_cpu_scans():
        return ("cpu",)
    if device_type == "cuda" and "triton" in _available_on("cuda"):
        return ("triton",)
    return ()


def scan_backend(*tensors: torch.Tensor) -> str | None:
    """Which one-pass scan kernel takes these tensors: "cpu", "triton", or None."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    devices = {t.device.type for t in tensors}
    if len(devices) != 1:
        return None
    kernels = _scan_kernels_on(devices.pop())
    if not kernels or (kernels[0] == "triton" and torch.compiler.is_compiling()):
        return None
    return kernels[0]


def linear_scan(values: torch.Tensor, offsets: torch.Tensor, decay: float, reverse: bool) -> torch.Tensor | None:
    """y_t = x_t + decay * y_{t -/+ 1} within each segment of floating `values`, or None."""
    backend = scan_backend(values)
    if backend == "cpu":
        return torch.ops.crm_kernels_C.segment_linear_scan(values.contiguous(), offsets.long().contiguous(), decay, reverse)
    if backend == "triton":
        from crm_kernels._triton.scan import segment_linear_scan

        return segment_linear_scan(values, offsets, decay, reverse)
    return None


def reverse_cummin(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor | None:
    """y_t = min_{k >= t} x_k within each segment (C++ only), or None."""
    if scan_backend(values) == "cpu":
        return torch.ops.crm_kernels_C.segment_reverse_cummin(values.contiguous(), offsets.long().contiguous())
    return None


def segment_sum(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor | None:
    """[B] sum of each segment of floating `values`, added in float64 (C++ only), or None."""
    if scan_backend(values) == "cpu":
        return torch.ops.crm_kernels_C.segment_sum(values.contiguous(), offsets.long().contiguous())
    return None


def segment_to_rows(values: torch.Tensor, offsets: torch.Tensor, columns: torch.Tensor,
                    seq_len: int) -> torch.Tensor | None:  # fmt: skip
    """[B, seq_len] zeros with each segment's floating values added at their columns, in one
    pass (C++ only), or None."""
    if scan_backend(values) == "cpu":
        return torch.ops.crm_kernels_C.segment_to_rows(values.contiguous(), offsets.long().contiguous(),
                                                       columns.long().contiguous(), seq_len)  # fmt: skip
    return None


def segment_to_rows_out(values: torch.Tensor, offsets: torch.Tensor, columns: torch.Tensor,
                        rows: torch.Tensor) -> bool:  # fmt: skip
    """segment_to_rows into the given contiguous [B, seq_len] rows of values' dtype (C++ only);
    False where no kernel takes these tensors."""
    if scan_backend(values, rows) != "cpu":
        return False
    torch.ops.crm_kernels_C.segment_to_rows_out(values.contiguous(), offsets.long().contiguous(),
                                                columns.long().contiguous(), rows)  # fmt: skip
    return True


def masked_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
               lam: float) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """GAE over the masked tokens of each [B, L] row in one pass (C++ only), or None."""
    if scan_backend(rewards, values, mask) == "cpu":
        return torch.ops.crm_kernels_C.masked_gae(rewards.contiguous(), values.to(rewards.dtype).contiguous(),
                                                  mask.bool().contiguous(), gamma, lam)  # fmt: skip
    return None


def masked_gae_out(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float,
                   advantages: torch.Tensor, returns: torch.Tensor) -> bool:  # fmt: skip
    """masked_gae into the given contiguous outputs of rewards' shape and dtype (C++ only); False
    where no kernel takes these tensors."""
    if scan_backend(rewards, values, mask, advantages, returns) != "cpu":
        return False
    torch.ops.crm_kernels_C.masked_gae_out(rewards.contiguous(), values.to(rewards.dtype).contiguous(),
                                           mask.bool().contiguous(), gamma, lam, advantages, returns)  # fmt: skip
    return True
