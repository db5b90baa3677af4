"""Step tags in token tensors -> packed CRM offsets.

A step tag token follows every step; the CRM reads its hazard logit at the tag (SPEC 1).
`find_step_ends` finds the tags in a padded [B, L] batch, `find_step_ends_packed` in sequences
packed into one row with HF's `cu_seq_lens_q` offsets; both return `cu_steps` and the tags'
positions without a Python loop over rows.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._validate import check_offset_values, check_offsets, check_same_shape, check_token_ids


def _step_token_tensor(step_token_ids, device) -> Tensor:
    ids = [step_token_ids] if isinstance(step_token_ids, int) else list(step_token_ids)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"step_token_ids must be an int or a non-empty list of ints, got {step_token_ids!r}")
    return torch.tensor(ids, device=device)


def cu_steps_from_lengths(lengths, dtype: torch.dtype = torch.int64) -> Tensor:
    """[B] step counts -> [B + 1] offsets."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor or list, got {lengths.dtype} {tuple(lengths.shape)}")
    if lengths.numel() and bool((lengths < 0).any()):
        raise ValueError(f"lengths must be >= 0, got {lengths.min().item()}")
    offsets = torch.zeros(lengths.numel() + 1, dtype=dtype, device=lengths.device)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return offsets


def find_step_ends(input_ids: Tensor, attention_mask: Tensor | None, step_token_ids: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Step tags in a padded batch.

    Args:
        input_ids: [B, L] token ids, left or right padded.
        attention_mask: [B, L] 1 on real tokens (tags under padding are ignored), or None.
        step_token_ids: the tag's id, or a list of ids any of which ends a step.

    Returns:
        cu_steps: [B + 1] int64 offsets; row i owns steps cu_steps[i]:cu_steps[i + 1].
        step_positions: [N] int64 column of each tag in its row, rows in order, left to right.
    """
    check_token_ids(input_ids)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
    is_tag = torch.isin(input_ids, _step_token_tensor(step_token_ids, input_ids.device))
    if attention_mask is not None:
        check_same_shape(attention_mask, "attention_mask", input_ids, "input_ids")
        is_tag &= attention_mask.bool()
    # nonzero is row-major, which is exactly the packed order; its size is data-dependent.
    step_positions = is_tag.nonzero()[:, 1]
    return cu_steps_from_lengths(is_tag.sum(1)), step_positions


def find_step_ends_packed(input_ids: Tensor, cu_seq_lens: Tensor, step_token_ids: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Step tags in sequences packed into one row (HF `DataCollatorWithFlattening`).

    Args:
        input_ids: [T] or [1, T] token ids of all sequences back to back.
        cu_seq_lens: [B + 1] sequence offsets into the T tokens (`cu_seq_lens_q`).
        step_token_ids: as in `find_step_ends`.

    Returns:
        cu_steps: [B + 1] int64; step_positions: [N] int64 index of each tag among the T tokens.
    """
    check_token_ids(input_ids)
    if input_ids.dim() == 2 and input_ids.shape[0] == 1:
        input_ids = input_ids[0]
    if input_ids.dim() != 1:
        raise ValueError(f"packed input_ids must be [T] or [1, T], got shape {tuple(input_ids.shape)}")
    check_offsets(cu_seq_lens, input_ids, "cu_seq_lens", "input_ids")
    check_offset_values(cu_seq_lens, "cu_seq_lens", input_ids.numel(), "the number of packed tokens")
    is_tag = torch.isin(input_ids, _step_token_tensor(step_token_ids, input_ids.device))
    step_positions = is_tag.nonzero()[:, 0]
    return cu_steps_from_cu_seq_lens(step_positions, cu_seq_lens), step_positions


def cu_steps_from_cu_seq_lens(step_positions: Tensor, cu_seq_lens: Tensor) -> Tensor:
    """cu_steps from the sorted positions of the step tags in a packed row and the sequences'
    offsets (`cu_seq_lens_q`, assumed valid): the steps before sequence i's first token are those
    of sequences 0..i-1, so cu_steps[i] counts the tags before cu_seq_lens[i]."""
    return torch.searchsorted(step_positions, cu_seq_lens.to(step_positions.dtype))
