"""One-pass segmented linear scans in Triton: y_t = x_t + decay * y_{t-1} within each segment (or
y_{t+1} reading back to front), the returns-to-go and GAE recursions of crm_kernels.rl on GPUs.

A step is the affine map y -> a_t * y + x_t with a_t = decay, or 0 where a segment starts; maps
compose associatively ((a1, b1) then (a2, b2) is (a1 a2, a2 b1 + b2)), so a chunk of steps is one
`tl.associative_scan`. Chunks are linked as in `_segments` (three launches): each chunk writes the
map of its whole length, one program composes those into the value carried into every chunk, and
each chunk rescans and applies its carry: y_t = B_t + A_t * carry, where A_t is 0 for a step whose
segment started inside the chunk. Accumulates in float32 (float64 for float64 values).
"""

import torch
import triton
import triton.language as tl

from ._segments import BLOCK_STEPS, CARRY_BLOCK, SIZES, launch_options, chunk_layout, last_lane, search_steps, tl_dtype


@triton.jit
def _compose(decay_a, value_a, decay_b, value_b):
    return decay_a * decay_b, decay_b * value_a + value_b


@triton.jit(do_not_specialize=("num_values", "num_segments", "search_steps"),
            do_not_specialize_on_alignment=("offsets_ptr", "decay_ptr"))  # fmt: skip
def _linear_scan_kernel(
    values_ptr, offsets_ptr, decay_ptr, out_ptr, num_values: tl.int64, num_segments: tl.int64, search_steps: tl.int32,
    chunk_decay_ptr, chunk_value_ptr, carries_ptr,
    ACC: tl.constexpr, BLOCK: tl.constexpr, REVERSE: tl.constexpr, FINAL: tl.constexpr,
):  # fmt: skip
    chunk_start, pos, valid, step, seg, seg_begin, seg_end, first_pos = chunk_layout(
        offsets_ptr, num_values, num_segments, search_steps, BLOCK, REVERSE
    )
    decay = tl.load(decay_ptr).to(ACC)
    x = tl.load(values_ptr + step, mask=valid, other=0.0).to(ACC)
    a = tl.where(pos == first_pos, 0.0, decay).to(ACC)
    maps, sums = tl.associative_scan((a, x), 0, _compose)
    if FINAL:
        carry = tl.load(carries_ptr + tl.program_id(0))
        tl.store(out_ptr + step, (sums + maps * carry).to(out_ptr.dtype.element_ty), mask=valid)
    else:
        tl.store(chunk_decay_ptr + tl.program_id(0), last_lane(maps, BLOCK))
        tl.store(chunk_value_ptr + tl.program_id(0), last_lane(sums, BLOCK))


@triton.jit(do_not_specialize=SIZES)
def _linear_carries_kernel(chunk_decay_ptr, chunk_value_ptr, carries_ptr, num_chunks: tl.int32, BLOCK: tl.constexpr):
    """carries[c] = the value leaving chunk c - 1: the chunks' maps composed in order from 0."""
    running = tl.sum(tl.zeros([BLOCK], dtype=chunk_value_ptr.dtype.element_ty), axis=0)
    for first in range(0, num_chunks, BLOCK):
        chunk = first + tl.arange(0, BLOCK)
        inside = chunk < num_chunks
        decay = tl.load(chunk_decay_ptr + chunk, mask=inside, other=1.0)  # past the end: identity
        value = tl.load(chunk_value_ptr + chunk, mask=inside, other=0.0)
        maps, sums = tl.associative_scan((decay, value), 0, _compose)
        leaving = sums + maps * running
        tl.store(carries_ptr + chunk + 1, leaving, mask=chunk + 1 < num_chunks)
        running = last_lane(leaving, BLOCK)


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
    carries = torch.zeros_like(chunk_decay)
    args = (values, offsets, decay_tensor, out, num_values, num_segments, search_steps(num_segments),
            chunk_decay, chunk_value, carries)  # fmt: skip
    options = launch_options(values.dtype)
    meta = dict(ACC=tl_dtype(values.dtype), BLOCK=block, REVERSE=reverse, **options)
    if num_chunks > 1:
        _linear_scan_kernel[(num_chunks,)](*args, FINAL=False, **meta)
        _linear_carries_kernel[(1,)](chunk_decay, chunk_value, carries, num_chunks, BLOCK=carry_block, **options)
    _linear_scan_kernel[(num_chunks,)](*args, FINAL=True, **meta)
    return out
