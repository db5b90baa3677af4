"""The torch.library namespace `crm_kernels` of the private ops, and the one way an op is put in it.

Each op file defines its schema here with the implementation every backend shares (validation,
then `kernels(backend)`), for every device as torch's `custom_op` does, and a fake for tracing. The Autograd kernels of the differentiable ops
are C++ (csrc/autograd.cpp), registered when the extension `crm_kernels._C` loads: torch's
Python `custom_op` autograd cost about 30 us per forward+backward in argument plumbing alone
(issue 15), more than the kernels of a small batch. Without the extension, `refuse_gradients`
gives those ops an Autograd kernel that runs them without gradients and says why it cannot
differentiate, instead of torch's fallback, which only warns.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LIBRARY = torch.library.Library("crm_kernels", "DEF")

# The ops whose Autograd kernel csrc/autograd.cpp provides.
DIFFERENTIABLE: list[str] = []


def define(schema: str, implementation: Callable, fake: Callable, *, differentiable: bool = False):
    """Defines `crm_kernels::<name>(...)` from `schema`, runs `implementation` on tensors of any
    device (the "torch" backend runs wherever torch does), `fake` under tracing and on meta
    tensors. Returns the op (`torch.ops.crm_kernels.<name>.default`)."""
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, implementation, "CompositeExplicitAutograd")
    torch.library.register_fake(f"crm_kernels::{name}", fake, lib=LIBRARY)
    if differentiable:
        DIFFERENTIABLE.append(name)
    return getattr(torch.ops.crm_kernels, name).default


def refuse_gradients(reason: str) -> None:
    """Without the C++ extension: the differentiable ops still run, but a call that would need
    their gradient raises, naming `reason`."""
    for name in DIFFERENTIABLE:
        op = getattr(torch.ops.crm_kernels, name).default

        def without_gradients(keyset, *args, op=op, name=name):
            if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
                raise RuntimeError(f"crm_kernels.{name.lstrip('_')}: gradients need the C++ extension: {reason}")
            with torch._C._AutoDispatchBelowAutograd():
                return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

        LIBRARY.impl(name, without_gradients, "Autograd", with_keyset=True)
