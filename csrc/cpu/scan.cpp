// One-pass segmented scans for RL returns and advantages (crm_kernels.segment, crm_kernels.rl).
//
// The portable torch path scans by doubling: log2(longest segment) passes over the whole batch,
// which is what bounds it on long responses. Here each segment (or row) is walked once, in order,
// by one thread, and sums are carried in double: float32 results are correctly rounded sums
// whatever the length, with no cancellation, and bitwise the same for any thread count.
// The walk is sweep.h's (ranges of whole segments per thread, offsets clamped by clamped_bounds, so
// no input makes a kernel leave its buffers); its blocked visitor is not needed here, as these
// scans have no elementwise transform to vectorize.
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "sweep.h"

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace crm::cpu {
namespace {

// An uninitialized output, backed by transparent huge pages where the OS lends them on
// request (THP mode "madvise", as on the project's machine). The outputs of these scans are
// [B, L] token tensors of tens of megabytes: glibc maps each afresh and returns it when freed, so
// every call faulted in 4 KB pages one by one, and those faults (the kernel zeroing pages) took most
// of masked_gae's time. The advice covers the whole pages inside the buffer, before the first touch.
at::Tensor fresh_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr()), end = begin + out.nbytes();
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first && last - first >= kHugePage) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only: ignore failure
  }
#endif
  return out;
}

void check_scan_inputs(const at::Tensor& values, const at::Tensor& offsets) {
  TORCH_CHECK(values.dim() == 1 && values.is_contiguous(), "values must be a contiguous 1-D tensor");
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
              "values must be float32 or float64");
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1 && offsets.is_contiguous() &&
                  offsets.scalar_type() == at::kLong,
              "offsets must be a contiguous 1-D int64 tensor with at least one entry");
}

// Runs visit(x, y, begin, end) over every segment of `values`, writing a new tensor of its shape
// and dtype: the walk both segment scans share.
template <typename Visit>
at::Tensor scan_segments(const at::Tensor& values, const at::Tensor& offsets, const Visit& visit) {
  check_scan_inputs(values, offsets);
  at::Tensor out = fresh_output(values.sizes(), values.options());
  const int64_t n = values.numel(), num_segments = offsets.numel() - 1;
  const int64_t* cu = offsets.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "scan_segments", [&] {
    const scalar_t* x = values.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    parallel_for_trajectories(cu, num_segments, n, [&](int64_t b_begin, int64_t b_end) {
      for (int64_t b = b_begin; b < b_end; ++b) {
        const auto [begin, end] = clamped_bounds(cu, b, n);
        visit(x, y, begin, end);
      }
    });
  });
  return out;
}

// y_t = x_t + decay * y_{t-1} (forward) or y_t = x_t + decay * y_{t+1} (reverse), within segments.
at::Tensor segment_linear_scan(const at::Tensor& values, const at::Tensor& offsets, double decay, bool reverse) {
  return scan_segments(values, offsets, [&](const auto* x, auto* y, int64_t begin, int64_t end) {
    using scalar_t = std::remove_pointer_t<decltype(y)>;
    double carry = 0.0;
    if (reverse) {
      for (int64_t i = end - 1; i >= begin; --i) y[i] = static_cast<scalar_t>(carry = x[i] + decay * carry);
    } else {
      for (int64_t i = begin; i < end; ++i) y[i] = static_cast<scalar_t>(carry = x[i] + decay * carry);
    }
  });
}

// y_t = min_{k >= t} x_k within segments; a NaN poisons everything before it (as torch.minimum).
at::Tensor segment_reverse_cummin(const at::Tensor& values, const at::Tensor& offsets) {
  return scan_segments(values, offsets, [](const auto* x, auto* y, int64_t begin, int64_t end) {
    using scalar_t = std::remove_pointer_t<decltype(y)>;
    scalar_t running = std::numeric_limits<scalar_t>::infinity();
    for (int64_t i = end - 1; i >= begin; --i) {
      running = (std::isnan(x[i]) || std::isnan(running)) ? std::numeric_limits<scalar_t>::quiet_NaN()
                                                          : std::min(running, x[i]);
      y[i] = running;
    }
  });
}

// [B, seq_len] rows, zero but for each segment's values added at their columns, in step order
// (crm_kernels.rl.to_token_level): one pass over the rows, each zeroed and filled by one thread,
// where torch's zeros + accumulating index_put took two passes and a serial scatter. It adds in the
// values' dtype, as index_put does, so both paths agree to the bit. Columns outside [0, seq_len)
// (bad input with validate=False) are skipped.
at::Tensor segment_to_rows(const at::Tensor& values, const at::Tensor& offsets, const at::Tensor& columns,
                           int64_t seq_len) {
  check_scan_inputs(values, offsets);
  TORCH_CHECK(columns.dim() == 1 && columns.is_contiguous() && columns.scalar_type() == at::kLong &&
                  columns.numel() == values.numel(),
              "columns must be a contiguous int64 tensor with one entry per value");
  TORCH_CHECK(seq_len >= 0, "seq_len must be >= 0");
  const int64_t n = values.numel(), num_segments = offsets.numel() - 1;
  at::Tensor rows = fresh_output({num_segments, seq_len}, values.options());
  const int64_t* cu = offsets.data_ptr<int64_t>();
  const int64_t* column = columns.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "segment_to_rows", [&] {
    const scalar_t* x = values.data_ptr<scalar_t>();
    scalar_t* out = rows.data_ptr<scalar_t>();
    parallel_for_trajectories(cu, num_segments, n, [&](int64_t b_begin, int64_t b_end) {
      for (int64_t b = b_begin; b < b_end; ++b) {
        scalar_t* row = out + b * seq_len;
        std::fill(row, row + seq_len, scalar_t(0));
        const auto [begin, end] = clamped_bounds(cu, b, n);
        for (int64_t t = begin; t < end; ++t) {
          if (column[t] >= 0 && column[t] < seq_len) row[column[t]] += x[t];
        }
      }
    });
  });
  return rows;
}

// GAE over [B, L] rows with a response mask (verl's compute_gae_advantage_return): masked-out
// tokens are skipped (their advantage and return are 0 and the recursion passes over them), the
// value after a row's last masked token is 0.
constexpr int64_t kRowsAtOnce = 4;

std::tuple<at::Tensor, at::Tensor> masked_gae(const at::Tensor& rewards, const at::Tensor& values,
                                              const at::Tensor& mask, double gamma, double lam) {
  TORCH_CHECK(rewards.dim() == 2 && rewards.is_contiguous() && values.is_contiguous() && mask.is_contiguous(),
              "rewards, values and mask must be contiguous [B, L] tensors");
  TORCH_CHECK(values.sizes() == rewards.sizes() && mask.sizes() == rewards.sizes(),
              "rewards, values and mask must share one shape");
  TORCH_CHECK(values.scalar_type() == rewards.scalar_type() && mask.scalar_type() == at::kBool,
              "values must have rewards' dtype and mask must be bool");
  TORCH_CHECK(rewards.scalar_type() == at::kFloat || rewards.scalar_type() == at::kDouble,
              "rewards must be float32 or float64");
  at::Tensor advantages = fresh_output(rewards.sizes(), rewards.options());
  at::Tensor returns = fresh_output(rewards.sizes(), rewards.options());
  const int64_t rows = rewards.size(0), length = rewards.size(1);
  const bool* keep = mask.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES(rewards.scalar_type(), "masked_gae", [&] {
    const scalar_t* r = rewards.data_ptr<scalar_t>();
    const scalar_t* v = values.data_ptr<scalar_t>();
    scalar_t* adv = advantages.data_ptr<scalar_t>();
    scalar_t* ret = returns.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(kRowsAtOnce, kMinStepsPerRange / std::max<int64_t>(length, 1));
    at::parallel_for(0, rows, grain, [&](int64_t row_begin, int64_t row_end) {
      for (int64_t first = row_begin; first < row_end; first += kRowsAtOnce) {
        // kRowsAtOnce independent recursions side by side: one row's recursion is a chain of
        // dependent multiply-adds, and interleaved rows overlap their latencies (67.6 -> 57 ms on
        // [65,536, 288] on the project's machine, where the page faults of the fresh outputs are
        // most of the rest). Masked-out tokens leave a row's state as it is, without a branch;
        // each kept token is computed as before, so the results keep their bits.
        const int64_t count = std::min<int64_t>(kRowsAtOnce, row_end - first);
        double next_value[kRowsAtOnce] = {}, running[kRowsAtOnce] = {};
        for (int64_t t = length - 1; t >= 0; --t) {
          for (int64_t k = 0; k < count; ++k) {
            const int64_t i = (first + k) * length + t;
            const double value = v[i];
            const double updated = (r[i] + gamma * next_value[k] - value) + gamma * lam * running[k];
            running[k] = keep[i] ? updated : running[k];
            next_value[k] = keep[i] ? value : next_value[k];
            adv[i] = keep[i] ? static_cast<scalar_t>(running[k]) : scalar_t(0);
            ret[i] = keep[i] ? static_cast<scalar_t>(running[k] + value) : scalar_t(0);
          }
        }
      }
    });
  });
  return {advantages, returns};
}

}  // namespace

TORCH_LIBRARY_IMPL(crm_kernels_C, CPU, m) {
  m.impl("segment_linear_scan", &segment_linear_scan);
  m.impl("segment_reverse_cummin", &segment_reverse_cummin);
  m.impl("segment_to_rows", &segment_to_rows);
  m.impl("masked_gae", &masked_gae);
}

}  // namespace crm::cpu
