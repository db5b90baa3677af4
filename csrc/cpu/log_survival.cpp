// log_survival on the CPU: log S(t) = -sum_{k<=t} softplus(x_k) per trajectory (SPEC 1), and its
// backward d/dx_t = -h_t * sum_{k>=t} g_k, a reverse segmented scan (SPEC 3).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "crm_math.h"
#include "sweep.h"
#include "vec_math.h"

namespace crm::cpu {
namespace {

template <typename scalar_t, typename index_t>
void log_survival_forward_kernel(const scalar_t* logits, const index_t* cu_steps, int64_t num_trajectories,
                                 int64_t num_steps, at::opmath_type<scalar_t>* log_survival) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  struct PrefixSum {
    acc_t* out;
    acc_t sum = 0;
    void begin(int64_t) { sum = 0; }
    void piece(int64_t, int64_t lo, int64_t hi, const acc_t* softplus_values) {
      // A local running sum: `out` could alias the member as far as the compiler knows, which
      // would send every step's sum through memory.
      acc_t running = sum;
      for (int64_t t = lo; t < hi; ++t) {
        running += softplus_values[t - lo];
        out[t] = -running;
      }
      sum = running;
    }
    void end(int64_t) {}
  };
  auto softplus_block = [&](int64_t first, int64_t count, acc_t* values) {
    transform_block(logits + first, count, values, [](const Vec& x) { return softplus(x); });
  };
  parallel_for_trajectories(cu_steps, num_trajectories, num_steps, [&](int64_t b_begin, int64_t b_end) {
    PrefixSum visitor{log_survival};
    sweep<false, index_t, acc_t>(cu_steps, b_begin, b_end, num_steps, softplus_block, visitor);
  });
}

template <typename scalar_t, typename index_t>
void log_survival_backward_kernel(const at::opmath_type<scalar_t>* grad_log_survival, const scalar_t* logits,
                                  const index_t* cu_steps, int64_t num_trajectories, int64_t num_steps,
                                  scalar_t* grad_logits) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  struct SuffixSum {
    const acc_t* grad_out;
    scalar_t* grad_in;
    acc_t sum = 0;
    void begin(int64_t) { sum = 0; }
    void piece(int64_t, int64_t lo, int64_t hi, const acc_t* hazards) {
      acc_t running = sum;  // local, as in PrefixSum
      for (int64_t t = hi - 1; t >= lo; --t) {
        running += grad_out[t];
        grad_in[t] = static_cast<scalar_t>(-hazards[t - lo] * running);
      }
      sum = running;
    }
    void end(int64_t) {}
  };
  auto hazard_block = [&](int64_t first, int64_t count, acc_t* values) {
    transform_block(logits + first, count, values, [](const Vec& x) { return sigmoid(x); });
  };
  parallel_for_trajectories(cu_steps, num_trajectories, num_steps, [&](int64_t b_begin, int64_t b_end) {
    SuffixSum visitor{grad_log_survival, grad_logits};
    sweep<true, index_t, acc_t>(cu_steps, b_begin, b_end, num_steps, hazard_block, visitor);
  });
}

at::Tensor log_survival_forward(const at::Tensor& logits_in, const at::Tensor& cu_steps_in) {
  const at::Tensor logits = logits_in.contiguous(), cu_steps = cu_steps_in.contiguous();
  at::Tensor log_survival = at::empty(logits.sizes(), logits.options().dtype(accumulate_type(logits)));
  CRM_DISPATCH_LOGITS_AND_OFFSETS(logits, cu_steps, "log_survival_forward", [&] {
    log_survival_forward_kernel<scalar_t, index_t>(logits.const_data_ptr<scalar_t>(), cu_steps.const_data_ptr<index_t>(),
                                                   num_trajectories(cu_steps), logits.numel(),
                                                   log_survival.mutable_data_ptr<at::opmath_type<scalar_t>>());
  });
  return log_survival;
}

at::Tensor log_survival_backward(const at::Tensor& grad_in, const at::Tensor& logits_in, const at::Tensor& cu_steps_in) {
  const at::Tensor logits = logits_in.contiguous(), cu_steps = cu_steps_in.contiguous();
  const at::Tensor grad_log_survival = grad_in.to(accumulate_type(logits)).contiguous();
  at::Tensor grad_logits = at::empty_like(logits);
  CRM_DISPATCH_LOGITS_AND_OFFSETS(logits, cu_steps, "log_survival_backward", [&] {
    log_survival_backward_kernel<scalar_t, index_t>(
        grad_log_survival.const_data_ptr<at::opmath_type<scalar_t>>(), logits.const_data_ptr<scalar_t>(),
        cu_steps.const_data_ptr<index_t>(), num_trajectories(cu_steps), logits.numel(),
        grad_logits.mutable_data_ptr<scalar_t>());
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(crm_kernels_C, CPU, m) {
  m.impl("log_survival_forward", &log_survival_forward);
  m.impl("log_survival_backward", &log_survival_backward);
}

}  // namespace crm::cpu
