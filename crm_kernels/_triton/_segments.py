"""Segmented scans over the packed layout (SPEC 2), shared by the Triton kernels.

The packed steps are cut into fixed chunks of BLOCK steps, whatever the trajectory boundaries, so
every lane does useful work for any mix of lengths and one compiled kernel serves every shape.
A scan runs in three launches (reduce, then scan, then re-scan with carries):

1. each chunk scans its values with an (value, starts-a-segment) associative scan and writes the
   partial sum of its last segment (`tails`) and whether that segment started inside it (`fresh`);
2. one program scans those chunk summaries, the same segmented sum one level up, giving the sum
   carried into each chunk by a segment that started before it (`carries`); the same carries
   kernel serves scan.py's linear scans, whose chunk summaries are affine maps (`compose_affine`);
3. each chunk scans again and adds its carry to the steps of the segment it continues.

Nothing is computed as "global prefix minus segment start" (SPEC 4 forbids the cancellation), no
atomics are used (bitwise deterministic), and reverse scans read the steps back to front and scan
forward (Triton's reverse=True scans have open wrong-result bugs on GPUs).
"""

import torch
import triton
import triton.language as tl

BLOCK_STEPS = 1024
CARRY_BLOCK = 1024

# How the kernels are specialized. Triton compiles a new variant for every class of value an
# unannotated int takes (== 1, divisible by 16, above 2^31) and for every 16-byte alignment of a
# pointer. Sizes therefore have fixed types (int64 where they count steps or trajectories, which may
# pass 2^31) and are never specialized: one variant serves every batch shape, and a GPU user does
# not pay a fresh compile when a batch happens to hold 16k steps. Pointers that are only gathered
# through (per-trajectory offsets and labels) gain nothing from alignment and are not specialized
# on it; the per-step streams keep it, since it decides their vector width.
# benchmarks/gpu_resources.py compiles every variant the wrappers launch for sm_80 and sm_90.
SIZES = ("num_steps", "num_trajectories", "search_steps", "num_chunks")
GATHERED = ("cu_steps_ptr", "outcome_ptr", "first_error_ptr")



def launch_options(acc_dtype: torch.dtype) -> dict:
    """Options of every launch. Warps: float32 kernels spread a chunk's 1024 steps over 8 warps (4
    steps a thread) and float64 ones, whose values take two registers each, over 16. With 4 warps
    ptxas needed up to 138 registers (and spilled) for float32 crm_loss and 254 for float64; now
    every variant fits in 128 (benchmarks/results/gpu_resources.md), leaving at least 16 warps
    resident per SM. FMA contraction is set explicitly (Triton 3.9 defaults it on, 3.10 off): off
    keeps the GPU's arithmetic that of the interpreter the tests run, less the approximate exp
    (ex2.approx.f32) and division (div.full.f32); see README "Accuracy on GPUs"."""
    return dict(num_warps=16 if acc_dtype == torch.float64 else 8, enable_fp_fusion=False)


@triton.jit
def segment_of(step, cu_steps_ptr, num_trajectories, search_steps):
    """The trajectory holding each step: the last b with cu_steps[b] <= step, so empty
    trajectories are skipped. Binary search; every probe is inside cu_steps whatever it holds."""
    lo = tl.zeros_like(step)
    hi = lo + (num_trajectories - 1)
    for _ in range(search_steps):
        mid = (lo + hi + 1) // 2
        right = tl.load(cu_steps_ptr + mid).to(tl.int64) <= step
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid - 1)
    return lo


@triton.jit
def chunk_layout(cu_steps_ptr, num_steps, num_trajectories, search_steps, BLOCK: tl.constexpr, REVERSE: tl.constexpr):
    """Where this program's chunk lies. `pos` is the position in scan order (step = pos, or
    N - 1 - pos when REVERSE); `first_pos` the scan-order position where each step's trajectory
    begins, so a step starts a segment iff pos == first_pos and continues the previous chunk's
    last segment iff first_pos < chunk_start."""
    chunk_start = tl.program_id(0).to(tl.int64) * BLOCK
    pos = chunk_start + tl.arange(0, BLOCK)
    valid = pos < num_steps
    clamped = tl.minimum(pos, num_steps - 1)
    if REVERSE:
        step = num_steps - 1 - clamped
    else:
        step = clamped
    seg = segment_of(step, cu_steps_ptr, num_trajectories, search_steps)
    seg_begin = tl.load(cu_steps_ptr + seg).to(tl.int64)
    seg_end = tl.load(cu_steps_ptr + seg + 1).to(tl.int64)
    if REVERSE:
        first_pos = num_steps - seg_end
    else:
        first_pos = seg_begin
    return chunk_start, pos, valid, step, seg, seg_begin, seg_end, first_pos


@triton.jit
def _segmented_add(value_a, start_a, value_b, start_b):
    return tl.where(start_b != 0, value_b, value_a + value_b), start_a | start_b


@triton.jit
def _segmented_add2(first_a, second_a, start_a, first_b, second_b, start_b):
    restart = start_b != 0
    return (
        tl.where(restart, first_b, first_a + first_b),
        tl.where(restart, second_b, second_a + second_b),
        start_a | start_b,
    )


@triton.jit
def segmented_cumsum(values, starts):
    """Inclusive sums that restart where starts != 0 (int32 flags)."""
    sums, _ = tl.associative_scan((values, starts), 0, _segmented_add)
    return sums


@triton.jit
def segmented_cumsum2(first, second, starts):
    """Two value channels scanned over the same segments."""
    first_sums, second_sums, _ = tl.associative_scan((first, second, starts), 0, _segmented_add2)
    return first_sums, second_sums


@triton.jit
def last_lane(values, BLOCK: tl.constexpr):
    return tl.sum(tl.where(tl.arange(0, BLOCK) == BLOCK - 1, values, 0.0), axis=0)


@triton.jit
def store_chunk_summary(sums, channel, tails_ptr, num_chunks, BLOCK: tl.constexpr):
    """Phase 1: the partial sum of the chunk's last segment. Lanes past the end hold value 0 and
    no start, so the last lane's running sum is exactly that partial sum."""
    tl.store(tails_ptr + channel * num_chunks + tl.program_id(0), last_lane(sums, BLOCK))


@triton.jit
def store_chunk_freshness(valid, first_pos, chunk_start, fresh_ptr):
    """Phase 1: whether the chunk's last segment started inside the chunk (first_pos is
    non-decreasing, so its largest value is the last segment's)."""
    last_first_pos = tl.max(tl.where(valid, first_pos, -1), axis=0)
    tl.store(fresh_ptr + tl.program_id(0), (last_first_pos >= chunk_start).to(tl.int32))


@triton.jit
def add_carry(sums, channel, first_pos, chunk_start, carries_ptr, num_chunks):
    """Phase 3: add what earlier chunks contributed to the segment this chunk continues."""
    carry = tl.load(carries_ptr + channel * num_chunks + tl.program_id(0))
    return sums + tl.where(first_pos < chunk_start, carry, 0.0)


@triton.jit
def compose_affine(decay_a, value_a, start_a, decay_b, value_b, start_b):
    """Two affine maps y -> decay * y + value in order, restarting where b starts a segment (a
    flag, never a multiplication by 0, which would carry NaN across segments). The segmented sum
    is the case decay = 1; the linear scans of scan.py take any decay."""
    restart = start_b != 0
    return (tl.where(restart, decay_b, decay_a * decay_b), tl.where(restart, value_b, decay_b * value_a + value_b),
            start_a | start_b)  # fmt: skip


@triton.jit(do_not_specialize=SIZES)
def _chunk_carries_kernel(chunk_decay_ptr, tails_ptr, fresh_ptr, carries_ptr, num_chunks: tl.int32,
                          HAS_DECAY: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Phase 2, one program per channel: carries[c] = the value of the segment open at the end of
    chunk c - 1, the chunks' summaries (decay^length, tail, fresh) composed in order from chunk 0.
    Sums (HAS_DECAY false) have decay 1; scan.py's linear scans pass each chunk's decay."""
    channel = tl.program_id(0)
    tails_ptr += channel * num_chunks
    carries_ptr += channel * num_chunks
    running = tl.sum(tl.zeros([BLOCK], dtype=tails_ptr.dtype.element_ty), axis=0)
    for first in range(0, num_chunks, BLOCK):
        chunk = first + tl.arange(0, BLOCK)
        inside = chunk < num_chunks
        tails = tl.load(tails_ptr + chunk, mask=inside, other=0.0)
        fresh = tl.load(fresh_ptr + chunk, mask=inside, other=0)
        if HAS_DECAY:
            decay = tl.load(chunk_decay_ptr + chunk, mask=inside, other=1.0)  # past the end: identity
        else:
            decay = tl.zeros_like(tails) + 1.0
        maps, sums, seen_fresh = tl.associative_scan((decay, tails, fresh), 0, compose_affine)
        leaving = tl.where(seen_fresh != 0, sums, sums + maps * running)
        tl.store(carries_ptr + chunk + 1, leaving, mask=chunk + 1 < num_chunks)
        running = last_lane(leaving, BLOCK)


def byte_flags(labels: torch.Tensor) -> torch.Tensor:
    """0/1 labels of any accepted dtype as one byte each, so one compiled variant reads them all:
    a free view for 1-byte dtypes, one small elementwise op for wider ones."""
    if labels.element_size() == 1:
        return labels.view(torch.uint8)
    return (labels != 0).view(torch.uint8)


def search_steps(num_trajectories: int) -> int:
    """Binary-search iterations that find any of num_trajectories segments (a shape, not a value)."""
    return max(num_trajectories - 1, 1).bit_length()


def tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def launch_scan(kernel, num_steps: int, num_channels: int, acc_dtype: torch.dtype, device, block: int, *args, **kwargs):
    """Runs `kernel(*args, tails, fresh, carries, ..., BLOCK=block, FINAL=...)` as the three phases
    above; a batch that fits in one chunk needs only the last."""
    num_chunks = triton.cdiv(num_steps, block)
    tails = torch.empty((num_channels, num_chunks), dtype=acc_dtype, device=device)
    fresh = torch.empty(num_chunks, dtype=torch.int32, device=device)
    carries = torch.zeros((num_channels, num_chunks), dtype=acc_dtype, device=device)
    options = launch_options(acc_dtype)
    if num_chunks > 1:
        kernel[(num_chunks,)](*args, tails, fresh, carries, num_chunks, BLOCK=block, FINAL=False, **kwargs, **options)
        _chunk_carries_kernel[(num_channels,)](tails, tails, fresh, carries, num_chunks, HAS_DECAY=False,
                                               BLOCK=CARRY_BLOCK, **options)  # fmt: skip
    kernel[(num_chunks,)](*args, tails, fresh, carries, num_chunks, BLOCK=block, FINAL=True, **kwargs, **options)
