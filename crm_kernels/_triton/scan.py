"""One-pass segmented linear scans in Triton: y_t = x_t + decay * y_{t-1} within each segment (or
y_{t+1} reading back to front), the returns-to-go and GAE recursions of crm_kernels.rl on GPUs.

A step is the affine map y -> decay * y + x_t; maps compose associatively (`_segments.compose_affine`:
(a1, b1) then (a2, b2) is (a1 a2, a2 b1 + b2), restarting on a segment-start flag, never by a
multiplication by 0, which would carry one trajectory's NaN or inf into the next), so a chunk of
steps is one `tl.associative_scan`. Chunks are linked by `_segments`' scheme and carries kernel
(three launches): each chunk writes the map of its last segment and whether that segment started
inside it, one program composes those into the value carried into every chunk, and each chunk
rescans and applies its carry, y_t = B_t + A_t * carry, to the steps of the segment it continues.
Accumulates in float32 (float64 for float64 values).
"""

import torch
import triton
import triton.language as tl

from ._segments import (
    BLOCK_STEPS,
    CARRY_BLOCK,
    _chunk_carries_kernel,
    chunk_layout,
    compose_affine,
    last_lane,
    launch_options,
    search_steps,
    store_chunk_freshness,
    tl_dtype,
)


@triton.jit(do_not_specialize=("num_values", "num_segments", "search_steps"),
            do_not_specialize_on_alignment=("offsets_ptr", "decay_ptr"))  # fmt: skip
def _linear_scan_kernel(
    values_ptr, offsets_ptr, decay_ptr, out_ptr, num_values: tl.int64, num_segments: tl.int64, search_steps: tl.int32,
    chunk_decay_ptr, chunk_value_ptr, chunk_fresh_ptr, carries_ptr,
    ACC: tl.constexpr, BLOCK: tl.constexpr, REVERSE: tl.constexpr, FINAL: tl.constexpr,
):  # fmt: skip
    chunk_start, pos, valid, step, seg, seg_begin, seg_end, first_pos = chunk_layout(
        offsets_ptr, num_values, num_segments, search_steps, BLOCK, REVERSE
    )
    decay = tl.zeros([BLOCK], dtype=ACC) + tl.load(decay_ptr).to(ACC)
    x = tl.load(values_ptr + step, mask=valid, other=0.0).to(ACC)
    starts = ((pos == first_pos) & valid).to(tl.int32)
    maps, sums, _ = tl.associative_scan((decay, x, starts), 0, compose_affine)
    if FINAL:
        carry = tl.load(carries_ptr + tl.program_id(0))
        continued = tl.where(first_pos < chunk_start, sums + maps * carry, sums)
        tl.store(out_ptr + step, continued.to(out_ptr.dtype.element_ty), mask=valid)
    else:
        # Only full chunks' summaries are read (the last chunk carries into none), so the last
        # lane is the chunk's last step.
        tl.store(chunk_decay_ptr + tl.program_id(0), last_lane(maps, BLOCK))
        tl.store(chunk_value_ptr + tl.program_id(0), last_lane(sums, BLOCK))
        store_chunk_freshness(valid, first_pos, chunk_start, chunk_fresh_ptr)


def segment_linear_scan(values: torch.Tensor, offsets: torch.Tensor, decay: float, reverse: bool,
                        block: int = BLOCK_STEPS, carry_block: int = CARRY_BLOCK) -> torch.Tensor:  # fmt: skip
    """[N] float32 / float64 values cut by [B + 1] offsets -> the scan, same dtype."""
    values, offsets = values.contiguous(), offsets.contiguous()
    num_values, num_segments = values.numel(), offsets.numel() - 1
    out = torch.zeros_like(values)
    if num_values == 0 or num_segments < 1:
        return out
    decay_tensor = torch.tensor([decay], dtype=values.dtype, device=values.device)  # exact in float64
    num_chunks = triton.cdiv(num_values, block)
    chunk_decay = torch.empty(num_chunks, dtype=values.dtype, device=values.device)
    chunk_value = torch.empty_like(chunk_decay)
    chunk_fresh = torch.empty(num_chunks, dtype=torch.int32, device=values.device)
    carries = torch.zeros_like(chunk_decay)
    args = (values, offsets, decay_tensor, out, num_values, num_segments, search_steps(num_segments),
            chunk_decay, chunk_value, chunk_fresh, carries)  # fmt: skip
    options = launch_options(values.dtype)
    meta = dict(ACC=tl_dtype(values.dtype), BLOCK=block, REVERSE=reverse, **options)
    if num_chunks > 1:
        _linear_scan_kernel[(num_chunks,)](*args, FINAL=False, **meta)
        _chunk_carries_kernel[(1,)](chunk_decay, chunk_value, chunk_fresh, carries, num_chunks, HAS_DECAY=True,
                                    BLOCK=carry_block, **options)  # fmt: skip
    _linear_scan_kernel[(num_chunks,)](*args, FINAL=True, **meta)
    return out
