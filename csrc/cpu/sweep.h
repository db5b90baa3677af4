// How the CPU kernels walk a packed batch (SPEC 2).
//
// Work is split into contiguous ranges of whole trajectories holding about the same number of
// steps, so a few long trajectories among many short ones do not leave a thread idle. A trajectory
// is never split: each is accumulated in step order by one thread, so results are bitwise the same
// for any thread count.
//
// Within a range the steps are visited in fixed-size blocks: an elementwise transform (softplus,
// sigmoid) runs over the whole block with SIMD, whatever the trajectory boundaries, and then a
// visitor walks the trajectory pieces that lie in the block. Short trajectories therefore cost no
// partial vectors. Offsets are clamped to [0, N] before use, so no input, validated or not, makes a
// kernel read or write out of bounds.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "crm_ops.h"

namespace crm::cpu {

constexpr int64_t kBlockSteps = 1024;
// Below this many steps per range, threading costs more than it saves.
constexpr int64_t kMinStepsPerRange = 16384;

// Offset b clamped into [lower, num_steps]: every offset a CPU kernel reads goes through here.
template <typename index_t>
int64_t clamped_offset(const index_t* cu_steps, int64_t b, int64_t lower, int64_t num_steps) {
  return std::clamp<int64_t>(static_cast<int64_t>(cu_steps[b]), lower, num_steps);
}

// Trajectory b's steps [begin, end), inside [0, num_steps] whatever the offsets hold.
template <typename index_t>
std::pair<int64_t, int64_t> clamped_bounds(const index_t* cu_steps, int64_t b, int64_t num_steps) {
  const int64_t begin = clamped_offset(cu_steps, b, 0, num_steps);
  return {begin, clamped_offset(cu_steps, b + 1, begin, num_steps)};
}

template <typename index_t, typename RangeFn>
void parallel_for_trajectories(const index_t* cu_steps, int64_t num_trajectories, int64_t num_steps,
                               const RangeFn& range_fn) {
  if (num_trajectories == 0) return;
  const int64_t num_ranges = std::clamp<int64_t>(num_steps / kMinStepsPerRange, 1, 4 * at::get_num_threads());
  if (num_ranges == 1) {  // small batches: no thread wake-up
    range_fn(0, num_trajectories);
    return;
  }
  // First trajectory of range r: the first whose start offset reaches r/num_ranges of the steps.
  auto range_begin = [&](int64_t r) -> int64_t {
    if (r == 0) return 0;
    if (r == num_ranges) return num_trajectories;
    const int64_t target = r * num_steps / num_ranges;
    return std::lower_bound(cu_steps, cu_steps + num_trajectories, target,
                            [](index_t offset, int64_t t) { return static_cast<int64_t>(offset) < t; }) -
           cu_steps;
  };
  at::parallel_for(0, num_ranges, 1, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t r = r_begin; r < r_end; ++r) {
      const int64_t b_begin = range_begin(r), b_end = std::max(b_begin, range_begin(r + 1));
      if (b_begin < b_end) range_fn(b_begin, b_end);
    }
  });
}

// x[0, count) widened to acc_t in one SIMD vector (zeros past count, count <= its width).
template <typename acc_t, typename scalar_t>
at::vec::Vectorized<acc_t> load_widened(const scalar_t* x, int64_t count) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return Vec::loadu(x, count);
  } else {
    acc_t widened[Vec::size()] = {};
    for (int64_t k = 0; k < count; ++k) widened[k] = static_cast<acc_t>(x[k]);
    return Vec::loadu(widened);
  }
}

// out[i] = f(float(x[i])) for i < n, with f applied to whole SIMD vectors (a partial vector at the
// end is padded), so every element gets the same rounding wherever a block starts.
template <typename scalar_t, typename acc_t, typename VecFn>
void transform_block(const scalar_t* x, int64_t n, acc_t* out, const VecFn& f) {
  constexpr int64_t kLanes = at::vec::Vectorized<acc_t>::size();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) f(load_widened<acc_t>(x + i, kLanes)).store(out + i);
  if (i < n) f(load_widened<acc_t>(x + i, n - i)).store(out + i, n - i);
}

// Runs f(first, count) over [begin, end) in steps of one SIMD vector (count < width at the end):
// the per-trajectory epilogues run eight (AVX2) trajectories at a time.
template <typename acc_t, typename F>
void for_each_vector(int64_t begin, int64_t end, const F& f) {
  constexpr int64_t kLanes = at::vec::Vectorized<acc_t>::size();
  for (int64_t first = begin; first < end; first += kLanes) f(first, std::min(kLanes, end - first));
}

// A lane mask (all bits set where true) from count values of any arithmetic type.
template <typename acc_t, typename T, typename Predicate>
at::vec::Vectorized<acc_t> lane_mask(const T* values, int64_t count, const Predicate& predicate) {
  using Vec = at::vec::Vectorized<acc_t>;
  acc_t flags[Vec::size()] = {};
  for (int64_t k = 0; k < count; ++k) flags[k] = predicate(values[k]) ? acc_t(1) : acc_t(0);
  return Vec::loadu(flags) > Vec(acc_t(0.5));
}

// A trajectory's sum in an order fixed by the trajectory alone: lane k of kLanes partial sums takes
// the steps t with (t - start) % kLanes == k, in step order, and total() adds the lanes as a fixed tree.
// Blocks and thread ranges may cut a trajectory into pieces anywhere; the bits do not change. Whole
// vectors add kLanes steps per instruction, so a long trajectory is not one serial chain of adds.
template <typename acc_t>
struct LaneSum {
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t kLanes = Vec::size();
  alignas(64) acc_t lanes[kLanes] = {};

  void reset() { std::fill(lanes, lanes + kLanes, acc_t(0)); }
  // Adds values[0, count), the steps `offset` onward counted from the trajectory's first step.
  void add(const acc_t* values, int64_t offset, int64_t count) {
    int64_t i = 0;
    for (; i < count && (offset + i) % kLanes != 0; ++i) lanes[(offset + i) % kLanes] += values[i];
    if (i == count) return;
    // From here lane k takes values[i + k]: whole vectors, then the rest as a zero-padded one.
    Vec sums = Vec::loadu(lanes);
    for (; i + kLanes <= count; i += kLanes) sums = sums + Vec::loadu(values + i);
    if (i < count) sums = sums + Vec::loadu(values + i, count - i);
    sums.store(lanes);
  }
  // The lanes added pairwise (a fixed tree: log2(kLanes) dependent adds, not kLanes - 1).
  acc_t total() const {
    acc_t partial[kLanes];
    std::copy(lanes, lanes + kLanes, partial);
    for (int64_t width = kLanes / 2; width >= 1; width /= 2) {
      for (int64_t k = 0; k < width; ++k) partial[k] += partial[k + width];
    }
    return partial[0];
  }
};

// Visits trajectories [b_begin, b_end) in order (kReverse: last step first). For each block of
// steps, transform(first_step, count, values) fills values[0, count); then for each trajectory
// piece [lo, hi) in the block, visitor.piece(b, lo, hi, values + (lo - first_step)). visitor.begin(b)
// and visitor.end(b) bracket every trajectory, empty ones included.
template <bool kReverse, typename index_t, typename acc_t, typename Transform, typename Visitor>
void sweep(const index_t* cu_steps, int64_t b_begin, int64_t b_end, int64_t num_steps, const Transform& transform,
           Visitor& visitor) {
  const int64_t first = clamped_offset(cu_steps, b_begin, 0, num_steps);
  const int64_t last = clamped_offset(cu_steps, b_end, first, num_steps);
  alignas(64) acc_t values[kBlockSteps];
  int64_t b = kReverse ? b_end - 1 : b_begin;
  auto more = [&] { return kReverse ? b >= b_begin : b < b_end; };
  bool open = false;
  for (int64_t done = 0; done < last - first; done += kBlockSteps) {
    const int64_t count = std::min(kBlockSteps, last - first - done);
    const int64_t block_lo = kReverse ? last - done - count : first + done, block_hi = block_lo + count;
    transform(block_lo, count, values);
    for (; more(); kReverse ? --b : ++b) {
      const auto [start, end] = clamped_bounds(cu_steps, b, num_steps);
      if (!open) visitor.begin(b);
      open = true;
      const int64_t lo = std::max(start, block_lo), hi = std::min(end, block_hi);
      if (lo < hi) visitor.piece(b, lo, hi, values + (lo - block_lo));
      if (kReverse ? start < block_lo : end > block_hi) break;  // continues in the next block
      visitor.end(b);
      open = false;
    }
  }
  // Trajectories after the last step (empty ones), or left over from offsets that were not valid.
  for (; more(); kReverse ? --b : ++b) {
    if (!open) visitor.begin(b);
    visitor.end(b);
    open = false;
  }
}

}  // namespace crm::cpu
