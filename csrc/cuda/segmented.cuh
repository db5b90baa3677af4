// Segmented scans over the packed layout (SPEC 2) on CUDA, the same scheme as the Triton kernels
// (crm_kernels/triton/_segments.py), which the tests hold to the reference on any machine:
//
// The packed steps are cut into fixed chunks of kChunk steps, whatever the trajectory boundaries.
// Each thread owns kItems consecutive steps of its chunk; a block-wide CUB scan with a segmented
// sum operator ((value, starts-a-segment) pairs) gives every step its running sum within its
// trajectory. A scan runs in three launches: (1) each chunk writes the partial sum of its last
// segment and whether that segment started inside it, (2) one block scans those summaries (the
// same operator one level up), giving the carry into each chunk, (3) each chunk scans again,
// starting from its carry. No atomics (bitwise deterministic), no host sync, any mix of lengths
// in one launch per phase. Every offset read is clamped, so no input makes a kernel leave bounds.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "crm_math.h"

namespace crm::cuda {

constexpr int kThreads = 256;
// __launch_bounds__(kThreads, kMinBlocksPerSM): ptxas left to itself picked 32 or 64 registers for
// occupancy and spilled 4-16 bytes in 11 kernels; asking for two resident blocks (16 warps) per SM
// lets it use up to 128 and none spills (benchmarks/results/gpu_resources.md).
constexpr int kMinBlocksPerSM = 2;
constexpr int kItems = 8;
constexpr int64_t kChunk = int64_t(kThreads) * kItems;

template <typename acc_t>
__device__ __forceinline__ acc_t widen(float x) { return static_cast<acc_t>(x); }
template <typename acc_t>
__device__ __forceinline__ acc_t widen(double x) { return static_cast<acc_t>(x); }
template <typename acc_t>
__device__ __forceinline__ acc_t widen(__half x) { return static_cast<acc_t>(__half2float(x)); }
template <typename acc_t>
__device__ __forceinline__ acc_t widen(__nv_bfloat16 x) { return static_cast<acc_t>(__bfloat162float(x)); }

template <typename scalar_t>
__device__ __forceinline__ scalar_t narrow(float x) { return static_cast<scalar_t>(x); }
template <>
__device__ __forceinline__ __half narrow<__half>(float x) { return __float2half(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// A running sum that restarts at segment starts. `started`: a segment starts at or before this
// point of the scanned range (so what comes before does not add in).
template <typename T>
struct Running {
  T value;
  int started;
};

template <typename T>
struct Running2 {
  T first, second;
  int started;
};

// A carried sum, continuing the segment it is added to (its start flag dropped).
template <typename T>
__device__ __forceinline__ Running<T> continuing(const Running<T>& carry) {
  return {carry.value, 0};
}
template <typename T>
__device__ __forceinline__ Running2<T> continuing(const Running2<T>& carry) {
  return {carry.first, carry.second, 0};
}

struct SegmentedAdd {
  template <typename T>
  __device__ __forceinline__ Running<T> operator()(const Running<T>& a, const Running<T>& b) const {
    return {b.started ? b.value : a.value + b.value, a.started | b.started};
  }
  template <typename T>
  __device__ __forceinline__ Running2<T> operator()(const Running2<T>& a, const Running2<T>& b) const {
    return {b.started ? b.first : a.first + b.first, b.started ? b.second : a.second + b.second,
            a.started | b.started};
  }
};

// The trajectory holding `step`: the last b with cu_steps[b] <= step (empty trajectories are
// skipped). Binary search; every probe is inside cu_steps whatever it holds.
template <typename index_t>
__device__ __forceinline__ int64_t segment_of(const index_t* cu_steps, int64_t num_trajectories, int64_t step) {
  int64_t lo = 0, hi = num_trajectories - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (static_cast<int64_t>(cu_steps[mid]) <= step) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The steps one thread owns, in scan order: position p = chunk * kChunk + thread * kItems + i,
// step = p (forward) or N - 1 - p (reverse). Walks the trajectory index along with the steps.
template <bool kReverse, typename index_t>
struct ThreadSteps {
  const index_t* cu_steps;
  int64_t num_trajectories, num_steps, first_pos;
  int64_t seg = 0;

  __device__ ThreadSteps(const index_t* cu, int64_t batch, int64_t n, int64_t chunk)
      : cu_steps(cu), num_trajectories(batch), num_steps(n),
        first_pos(chunk * kChunk + int64_t(threadIdx.x) * kItems) {
    if (first_pos < num_steps) seg = segment_of(cu_steps, num_trajectories, step(0));
  }
  __device__ __forceinline__ bool valid(int i) const { return first_pos + i < num_steps; }
  __device__ __forceinline__ int64_t step(int i) const {
    return kReverse ? num_steps - 1 - (first_pos + i) : first_pos + i;
  }
  // Moves `seg` to the trajectory of step(i) (steps only move one way along a thread's items).
  __device__ __forceinline__ void advance(int i) {
    const int64_t s = step(i);
    if (kReverse) {
      while (seg > 0 && static_cast<int64_t>(cu_steps[seg]) > s) --seg;
    } else {
      while (seg + 1 < num_trajectories && static_cast<int64_t>(cu_steps[seg + 1]) <= s) ++seg;
    }
  }
  __device__ __forceinline__ int64_t seg_begin() const { return cu_steps[seg]; }
  __device__ __forceinline__ int64_t seg_end() const { return cu_steps[seg + 1]; }
  // The step is the first of its trajectory in scan order.
  __device__ __forceinline__ bool starts_segment(int i) const {
    return kReverse ? step(i) == seg_end() - 1 : step(i) == seg_begin();
  }
};

// Phase 2: carries[c] = running sum of the segment open at the end of chunk c - 1 (carries[0] is
// zeroed by the host). One block, tiles of kThreads chunk summaries.
template <typename P>
__global__ void chunk_carries_kernel(const P* summaries, P* carries, int64_t num_chunks) {
  using BlockScan = cub::BlockScan<P, kThreads>;
  __shared__ typename BlockScan::TempStorage temp;
  P running{};
  for (int64_t first = 0; first < num_chunks; first += kThreads) {
    const int64_t c = first + threadIdx.x;
    P item = c < num_chunks ? summaries[c] : P{};
    P inclusive, tile;
    BlockScan(temp).InclusiveScan(item, inclusive, SegmentedAdd(), tile);
    inclusive = SegmentedAdd()(running, inclusive);
    if (c + 1 < num_chunks) carries[c + 1] = inclusive;
    running = SegmentedAdd()(running, tile);
    __syncthreads();
  }
}

// Replaces each of a thread's items by its running sum within its trajectory, block-wide, starting
// from `initial` (the carry into this chunk). `block_total` receives the chunk's summary.
template <typename P>
__device__ __forceinline__ void scan_thread_items(P (&items)[kItems], const P& initial, P& block_total) {
  using BlockScan = cub::BlockScan<P, kThreads>;
  __shared__ typename BlockScan::TempStorage temp;
  P thread_total = items[0];
#pragma unroll
  for (int i = 1; i < kItems; ++i) thread_total = SegmentedAdd()(thread_total, items[i]);
  P running;
  BlockScan(temp).ExclusiveScan(thread_total, running, initial, SegmentedAdd(), block_total);
#pragma unroll
  for (int i = 0; i < kItems; ++i) items[i] = running = SegmentedAdd()(running, items[i]);
}

// One chunk's pass of a three-phase scan, what every scanning kernel runs: items[i] =
// make_item(i) for each of the thread's valid steps (after steps.advance(i); P{} past the end),
// scanned block-wide from the carry into this chunk (final pass), or, in the first pass, reduced
// to the chunk's summary. `steps` is left at the thread's last valid step.
template <bool kFinal, typename P, typename Steps, typename MakeItem>
__device__ __forceinline__ void scan_chunk(Steps& steps, const MakeItem& make_item, P (&items)[kItems],
                                           P* summaries, const P* carries) {
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    items[i] = P{};
    if (!steps.valid(i)) continue;
    steps.advance(i);
    items[i] = make_item(i);
  }
  const P carry = kFinal ? continuing(carries[blockIdx.x]) : P{};
  P total;
  scan_thread_items(items, carry, total);
  if constexpr (!kFinal) {
    if (threadIdx.x == 0) summaries[blockIdx.x] = total;
  }
}

// Bytes of scratch a three-phase scan of num_steps needs: chunk summaries and carries.
template <typename P>
inline int64_t scan_workspace_bytes(int64_t num_steps) {
  const int64_t num_chunks = (num_steps + kChunk - 1) / kChunk;
  return 2 * num_chunks * int64_t(sizeof(P));
}

// Launches kernel<kFinal>(args..., summaries, carries) as the three phases above.
template <typename P, typename Phase1, typename Phase3, typename... Args>
cudaError_t launch_scan(Phase1 phase1, Phase3 phase3, int64_t num_steps, void* workspace, cudaStream_t stream,
                        Args... args) {
  const int64_t num_chunks = (num_steps + kChunk - 1) / kChunk;
  P* summaries = static_cast<P*>(workspace);
  P* carries = summaries + num_chunks;
  cudaError_t status = cudaMemsetAsync(carries, 0, sizeof(P), stream);
  if (status != cudaSuccess) return status;
  if (num_chunks > 1) {
    phase1<<<num_chunks, kThreads, 0, stream>>>(args..., summaries, carries);
    chunk_carries_kernel<P><<<1, kThreads, 0, stream>>>(summaries, carries, num_chunks);
  }
  phase3<<<num_chunks, kThreads, 0, stream>>>(args..., summaries, carries);
  return cudaGetLastError();
}

}  // namespace crm::cuda
