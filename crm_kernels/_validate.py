"""Input checks of SPEC section 5, for every public function: one function per argument kind.

`check_*` look at metadata only (rank, dtype, device, length), cost no device sync and always run.
`check_values` reads the offsets and labels (one device sync) and runs unless validate=False; the
ops call it inside their implementation, so it also runs under torch.compile without a graph break.
Messages name the argument and, for values, the first offending position.
"""

from __future__ import annotations

import torch

from ._backends import _available_on
from ._numerics import REDUCTIONS

LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
OFFSET_DTYPES = (torch.int32, torch.int64)
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _one_dim(value: torch.Tensor, name: str, length: int | None = None, length_name: str = "") -> None:
    if value.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(value.shape)}")
    if length is not None and value.numel() != length:
        raise ValueError(f"{name} must have {length_name} = {length} entries, got {value.numel()}")


def _same_device(value: torch.Tensor, name: str, logits: torch.Tensor) -> None:
    if value.device != logits.device:
        raise ValueError(f"{name} is on {value.device} but logits is on {logits.device}")


def check_logits(logits) -> torch.Tensor:
    _tensor(logits, "logits")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    _one_dim(logits, "logits")
    return logits


def check_cu_steps(cu_steps, logits: torch.Tensor) -> int:
    """Returns B, the number of trajectories."""
    return check_offsets(cu_steps, logits, "cu_steps", "logits")


def check_offsets(offsets, values: torch.Tensor, name: str, values_name: str) -> int:
    """Metadata of [B + 1] offsets into `values` (cu_steps, cu_groups). Returns B."""
    _tensor(offsets, name)
    if offsets.dtype not in OFFSET_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got {offsets.dtype}")
    _one_dim(offsets, name)
    if offsets.numel() == 0:
        raise ValueError(f"{name} must have B + 1 >= 1 entries ({name}[0] == 0), got an empty tensor")
    if offsets.device != values.device:
        raise ValueError(f"{name} is on {offsets.device} but {values_name} is on {values.device}")
    return offsets.numel() - 1


def check_outcome(outcome, batch: int, logits: torch.Tensor) -> torch.Tensor:
    _tensor(outcome, "outcome")
    if outcome.dtype != torch.bool and outcome.dtype not in INTEGER_DTYPES:
        raise TypeError(f"outcome must be bool or an integer tensor of 0/1, got {outcome.dtype}")
    _one_dim(outcome, "outcome", batch, "B (len(cu_steps) - 1)")
    _same_device(outcome, "outcome", logits)
    return outcome


def check_first_error(first_error, batch: int, logits: torch.Tensor):
    if first_error is None:
        return None
    _tensor(first_error, "first_error")
    if first_error.dtype not in OFFSET_DTYPES:
        raise TypeError(f"first_error must be int32 or int64, got {first_error.dtype}")
    _one_dim(first_error, "first_error", batch, "B (len(cu_steps) - 1)")
    _same_device(first_error, "first_error", logits)
    return first_error


def check_weights(weights) -> tuple[float, float, float]:
    try:
        w_survive, w_wrong, w_first_error = (float(w) for w in weights)
    except (TypeError, ValueError):
        raise TypeError(f"weights must be three numbers (w_S, w_W, w_z), got {weights!r}") from None
    return w_survive, w_wrong, w_first_error


def check_reduction(reduction: str, normalizer, validate: bool = True) -> None:
    """The reduction's name, and a normalizer that is a positive number (or a one-element tensor
    holding one: its value is read, one sync, unless validate=False): 0 gave inf, and a negative
    one a loss whose gradient climbs."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if normalizer is None:
        return
    if reduction == "none":
        raise ValueError("normalizer divides a reduced loss: it needs reduction='mean' or 'sum', not 'none'")
    if isinstance(normalizer, torch.Tensor):
        if normalizer.numel() != 1:
            raise ValueError(f"normalizer must be a number or a one-element tensor, got shape {tuple(normalizer.shape)}")
        if not validate or torch.compiler.is_compiling():  # reading it would sync or break the graph
            return
        normalizer = normalizer.item()
    if isinstance(normalizer, bool) or not isinstance(normalizer, (int, float)):
        raise TypeError(f"normalizer must be a positive number, got {type(normalizer).__name__}")
    if not normalizer > 0:  # also catches NaN
        raise ValueError(f"normalizer must be > 0 (the global number of trajectories), got {normalizer}")


def _compiled_check_passes(logits, cu_steps, outcome, first_error) -> bool:
    if "cpu" not in _available_on("cpu"):  # the cached tuple: this runs on every validated call
        return False
    return torch.ops.crm_kernels_C.inputs_are_valid(logits, cu_steps, outcome, first_error)


def _first(mask: torch.Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def _entry(name: str, values: torch.Tensor, bad: torch.Tensor, lengths=None) -> str:
    i = _first(bad)
    text = f"{name}[{i}] = {values[i].item()}"
    return text if lengths is None else f"{text}, n_{i} = {int(lengths[i])}"


def check_values(logits: torch.Tensor, cu_steps: torch.Tensor, outcome=None, first_error=None) -> None:
    """The value rules of SPEC 5. Every rule is evaluated on the device and fetched in one sync;
    a rule's `locate`, which finds the first offending position, runs only when it fails. CPU
    tensors first take the C++ pass (one loop, no temporaries), which is all a valid batch needs."""
    if cu_steps.device.type == "cpu" and _compiled_check_passes(logits, cu_steps, outcome, first_error):
        return
    lengths = cu_steps[1:] - cu_steps[:-1]
    rules = _offset_rules(cu_steps, "cu_steps", logits.numel(), "len(logits)")
    if outcome is not None:
        empty_flawed = (outcome == 0) & (lengths == 0)
        rules += [
            _binary_outcome_rule(outcome),
            ("a flawed trajectory (outcome 0) has no L_W when it is empty", empty_flawed.any(),
             lambda: f"trajectory {_first(empty_flawed)} has outcome 0 and no steps"),
        ]  # fmt: skip
        if first_error is not None:
            on_correct = (outcome != 0) & (first_error != -1)
            rules += [
                _first_error_range_rule(first_error, lengths),
                ("first_error must be -1 on a correct trajectory (outcome 1)", on_correct.any(),
                 lambda: _entry("first_error", first_error, on_correct)),
            ]  # fmt: skip
    _raise_first_failure(rules)


def _binary_outcome_rule(outcome: torch.Tensor):
    not_binary = (outcome != 0) & (outcome != 1)
    return ("outcome must be 0 or 1", not_binary.any(), lambda: _entry("outcome", outcome, not_binary))


def _first_error_range_rule(first_error: torch.Tensor, lengths: torch.Tensor):
    out_of_range = (first_error < -1) | (first_error >= lengths)
    return ("first_error must be in [-1, n_i)", out_of_range.any(),
            lambda: _entry("first_error", first_error, out_of_range, lengths))  # fmt: skip


def check_step_labels(step_labels, logits: torch.Tensor) -> torch.Tensor:
    """PRM's per-step targets: a floating [N] tensor beside the logits (values: check_objective_values)."""
    _tensor(step_labels, "step_labels")
    if not step_labels.is_floating_point():
        raise TypeError(f"step_labels must be a floating tensor of targets in [0, 1], got {step_labels.dtype}")
    _one_dim(step_labels, "step_labels", logits.numel(), "N (len(logits))")
    _same_device(step_labels, "step_labels", logits)
    return step_labels


def check_objective_values(logits: torch.Tensor, cu_steps: torch.Tensor, *, step_labels=None, outcome=None,
                           first_error=None) -> None:  # fmt: skip
    """The value rules of the baseline objectives (SPEC 7, with SPEC 5's offsets), in one sync:
    step labels in [0, 1] (PRM); an outcome in {0, 1} for every trajectory, each with a last step
    (ORM); first_error in [-1, n_i) (PQM, where -1 means every step is correct)."""
    lengths = cu_steps[1:] - cu_steps[:-1]
    rules = _offset_rules(cu_steps, "cu_steps", logits.numel(), "len(logits)")
    if step_labels is not None and step_labels.numel():
        # One pass (aminmax, NaN propagating), no [N] masks: the offending entry is looked for only
        # when there is one.
        lowest, highest = torch.aminmax(step_labels)
        rules.append(("step_labels must be in [0, 1]", ~((lowest >= 0) & (highest <= 1)),
                      lambda: _entry("step_labels", step_labels, ~((step_labels >= 0) & (step_labels <= 1)))))  # fmt: skip
    if outcome is not None:
        empty = lengths == 0
        rules += [
            _binary_outcome_rule(outcome),
            ("orm_loss reads each trajectory's last step, and an empty trajectory has none", empty.any(),
             lambda: f"trajectory {_first(empty)} has no steps"),
        ]  # fmt: skip
    if first_error is not None:
        rules.append(_first_error_range_rule(first_error, lengths))
    _raise_first_failure(rules)


def check_offset_values(offsets: torch.Tensor, name: str, length: int, length_name: str) -> None:
    """The value rules for offsets alone (one device sync)."""
    _raise_first_failure(_offset_rules(offsets, name, length, length_name))


def _offset_rules(offsets: torch.Tensor, name: str, length: int, length_name: str):
    lengths = offsets[1:] - offsets[:-1]

    def decreasing():
        i = _first(lengths < 0)
        return f"{name}[{i + 1}] = {int(offsets[i + 1])} < {name}[{i}] = {int(offsets[i])}"

    return [
        (f"{name}[0] must be 0", offsets[0] != 0, lambda: f"got {int(offsets[0])}"),
        (f"{name} must be non-decreasing", (lengths < 0).any(), decreasing),
        (f"{name}[-1] must equal {length_name} = {length}", offsets[-1] != length,
         lambda: f"got {int(offsets[-1])}"),
    ]  # fmt: skip


def _raise_first_failure(rules) -> None:
    """rules: (message, bad: bool tensor, locate: () -> str). One sync fetches every rule."""
    failed = torch.stack([bad.reshape(()) for _, bad, _ in rules]).tolist()
    for (message, _, locate), bad in zip(rules, failed):
        if bad:
            raise ValueError(f"{message}: {locate()}")


# ---- the helpers' arguments (segment, rl, data) -----------------------------------------------


def check_segments(values, offsets, validate: bool = True, *, values_name="values", offsets_name="offsets") -> int:
    """[N] values cut by [B + 1] offsets (the SPEC 5 offset rules, names as given); returns B."""
    _tensor(values, values_name)
    if values.dim() != 1:
        raise ValueError(f"{values_name} must be 1-D (packed), got shape {tuple(values.shape)}")
    batch = check_offsets(offsets, values, offsets_name, values_name)
    if validate:
        check_offset_values(offsets, offsets_name, values.numel(), f"len({values_name})")
    return batch


def check_same_shape(value, name: str, reference: torch.Tensor, reference_name: str) -> torch.Tensor:
    """A tensor of `reference`'s shape (a mask, values beside rewards, outcomes beside scores)."""
    if not isinstance(value, torch.Tensor) or value.shape != reference.shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a tensor shaped like {reference_name}, {tuple(reference.shape)}, got {got}")
    return value


def check_out(outs: dict, shape: tuple, dtype: torch.dtype, device: torch.device, inputs: dict) -> None:
    """`out=` tensors, by name: contiguous, of the result's shape, dtype and device, needing no
    gradient (writing into them is not differentiable), sharing no memory with each other or with
    the inputs (named tensors)."""
    for name, tensor in outs.items():
        _tensor(tensor, name)
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype or tensor.device != device:
            raise ValueError(f"{name} must be {dtype} of shape {tuple(shape)} on {device}, got "
                             f"{tensor.dtype} of shape {tuple(tensor.shape)} on {tensor.device}")  # fmt: skip
        if not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if tensor.requires_grad:
            raise ValueError(f"{name} requires a gradient: writing into it is not differentiable")
    names = list(outs)
    for i, name in enumerate(names):
        others = {**{other: outs[other] for other in names[i + 1:]}, **inputs}
        for other_name, other in others.items():
            if isinstance(other, torch.Tensor) and _overlap(outs[name], other):
                raise ValueError(f"{name} shares memory with {other_name}")


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of a (contiguous) and b intersect."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    b_first = b.data_ptr()
    b_last = b_first + (sum((size - 1) * stride for size, stride in zip(b.shape, b.stride())) + 1) * b.element_size()
    return b_first < a.data_ptr() + a.nbytes and a.data_ptr() < b_last


def check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_positive(value, name: str) -> float:
    """A number > 0 (a temperature, a learning rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def check_discount(value, name: str) -> None:
    """A discount (gamma, lambda): a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def check_count(value, name: str) -> int:
    """A size: an int >= 0 (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def check_step_token_index(step_token_index, step_values: torch.Tensor, seq_len: int) -> None:
    """Each step's token column: step_values' shape, every entry in [0, seq_len) (one sync)."""
    if not isinstance(step_token_index, torch.Tensor) or step_token_index.shape != step_values.shape:
        raise ValueError(f"step_token_index must be a tensor of step values' shape {tuple(step_values.shape)}")
    if not step_token_index.numel():
        return
    # One pass without [N] temporaries (the masks took 1 of to_token_level's 5 ms on 1M steps); the
    # offending entry is looked for only when there is one.
    lowest, highest = torch.aminmax(step_token_index)
    if bool((lowest < 0) | (highest >= seq_len)):
        bad = _first((step_token_index < 0) | (step_token_index >= seq_len))
        raise ValueError(f"step_token_index[{bad}] = {int(step_token_index[bad])} is outside [0, seq_len = {seq_len})")


def check_probabilities(values: torch.Tensor, name: str, hint: str = "") -> None:
    """Values in [0, 1] (NaN passes, to its trajectory), one sync."""
    outside = (values < 0) | (values > 1)
    if bool(outside.any()):
        i = _first(outside)
        raise ValueError(f"{name} must be probabilities in [0, 1], got {name}[{i}] = {float(values[i])}{hint}")


def check_step_scores(step_values: torch.Tensor, how: str) -> None:
    """Step scores in [0, 1]: hazard logits passed as scores gave NaN for "product" and
    meaningless numbers for the other aggregations."""
    check_probabilities(step_values, "step_values", f" for how={how!r} (scoring.step_scores(hazard_logits) for a "
                        "CRM); hazard logits take how='log_survival'")  # fmt: skip


def check_token_ids(input_ids, name: str = "input_ids") -> None:
    _tensor(input_ids, name)
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise TypeError(f"{name} must hold integer token ids, got {input_ids.dtype}")
