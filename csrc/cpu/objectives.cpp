// The baseline objectives of SPEC 7 on the CPU, in the packed layout of crm_loss: prm_loss (binary
// cross-entropy per step), orm_loss (at each trajectory's last step) and pqm_loss (per trajectory,
// running log-sum-exps). Formulas: crm_math.h; the reductions are crm_loss's (crm_ops.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "crm_math.h"
#include "sweep.h"
#include "vec_math.h"

namespace crm::cpu {
namespace {

// ---- prm_loss: per step ---------------------------------------------------------------------

// out[i] = f(x[i], y[i]) over the steps, SIMD vectors at a time, threads over ranges of steps.
template <typename scalar_t, typename acc_t, typename out_t, typename VecFn>
void map_steps(const scalar_t* x, const acc_t* y, int64_t n, out_t* out, const VecFn& f) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  at::parallel_for(0, n, kMinStepsPerRange, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += kLanes) {
      const int64_t count = std::min(kLanes, end - i);
      const Vec result = f(load_widened<acc_t>(x + i, count), Vec::loadu(y + i, count), i, count);
      if constexpr (std::is_same_v<out_t, acc_t>) {
        result.store(out + i, count);
      } else {
        acc_t values[kLanes];
        result.store(values);
        for (int64_t k = 0; k < count; ++k) out[i + k] = static_cast<out_t>(values[k]);
      }
    }
  });
}

at::Tensor prm_loss_forward(const at::Tensor& logits_in, const at::Tensor& step_labels,
                            std::optional<double> normalizer) {
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = step_labels.to(accumulate_type(logits)).contiguous();
  TORCH_CHECK(logits.dim() == 1 && labels.numel() == logits.numel(), "prm_loss: one step label per step");
  at::Tensor losses = at::empty({logits.numel()}, logits.options().dtype(accumulate_type(logits)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "prm_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    map_steps(logits.const_data_ptr<scalar_t>(), labels.const_data_ptr<acc_t>(), logits.numel(),
              losses.mutable_data_ptr<acc_t>(),
              [](const Vec& x, const Vec& y, int64_t, int64_t) { return bce_with_logits(x, y); });
  });
  return reduce_losses(losses, normalizer);
}

at::Tensor prm_loss_backward(const at::Tensor& grad_losses, const at::Tensor& logits_in,
                             const at::Tensor& step_labels) {
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = step_labels.to(accumulate_type(logits)).contiguous();
  const at::Tensor upstream = grad_losses.to(accumulate_type(logits)).contiguous();
  TORCH_CHECK(logits.dim() == 1 && labels.numel() == logits.numel() && upstream.numel() == logits.numel(),
              "prm_loss_backward: one step label and one upstream gradient per step");
  at::Tensor grad_logits = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "prm_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    const acc_t* g = upstream.const_data_ptr<acc_t>();
    map_steps(logits.const_data_ptr<scalar_t>(), labels.const_data_ptr<acc_t>(), logits.numel(),
              grad_logits.mutable_data_ptr<scalar_t>(), [g](const Vec& x, const Vec& y, int64_t i, int64_t count) {
                return Vec::loadu(g + i, count) * bce_with_logits_grad(x, y);
              });
  });
  return grad_logits;
}

// ---- orm_loss: each trajectory's last step ----------------------------------------------------

// The index of trajectory b's last step, or -1 for an empty one (rejected by validation; with
// validate=False its loss is NaN and it gets no gradient, rather than a read outside its steps).
template <typename index_t>
int64_t last_step(const index_t* cu_steps, int64_t b, int64_t num_steps) {
  const auto [begin, end] = clamped_bounds(cu_steps, b, num_steps);
  return end > begin ? end - 1 : -1;
}

at::Tensor orm_loss_forward(const at::Tensor& logits, const at::Tensor& cu_steps, const at::Tensor& outcome,
                            std::optional<double> normalizer) {
  const LossInputs in(logits, cu_steps, outcome, std::nullopt);
  at::Tensor losses = at::empty({in.batch}, in.accumulate_options());
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "orm_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = in.logits.const_data_ptr<scalar_t>();
    const index_t* cu = in.cu_steps.const_data_ptr<index_t>();
    const bool* correct = in.labels.correct_ptr();
    acc_t* out = losses.mutable_data_ptr<acc_t>();
    at::parallel_for(0, in.batch, kMinStepsPerRange, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t last = last_step(cu, b, in.logits.numel());
        out[b] = last < 0 ? acc_t(NAN) : bce_with_logits(static_cast<acc_t>(x[last]), acc_t(correct[b]));
      }
    });
  });
  return reduce_losses(losses, normalizer);
}

at::Tensor orm_loss_backward(const at::Tensor& grad_losses, const at::Tensor& logits, const at::Tensor& cu_steps,
                             const at::Tensor& outcome) {
  const LossInputs in(logits, cu_steps, outcome, std::nullopt);
  const at::Tensor upstream = in.per_trajectory(grad_losses, "grad_losses");
  at::Tensor grad_logits = at::zeros_like(in.logits);
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "orm_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = in.logits.const_data_ptr<scalar_t>();
    const index_t* cu = in.cu_steps.const_data_ptr<index_t>();
    const bool* correct = in.labels.correct_ptr();
    const acc_t* g = upstream.const_data_ptr<acc_t>();
    scalar_t* grad = grad_logits.mutable_data_ptr<scalar_t>();
    // One thread: with offsets that are not valid (validate=False) two trajectories may share a
    // last step, and their writes must not race.
    for (int64_t b = 0; b < in.batch; ++b) {
      const int64_t last = last_step(cu, b, in.logits.numel());
      if (last >= 0) {
        grad[last] = static_cast<scalar_t>(g[b] * bce_with_logits_grad(static_cast<acc_t>(x[last]), acc_t(correct[b])));
      }
    }
  });
  return grad_logits;
}

// ---- pqm_loss: per trajectory ------------------------------------------------------------------
// For trajectory [begin, end) with first wrong step z (z = n for -1): L_{-1} = log D_0 =
// softplus(lse over the wrong steps of x + margin), and for each correct step k
// L_k = log(D_{k-1} + e^{x_k}) = x_k + softplus(L_{k-1} - x_k), so that its term L_k - x_k is
// softplus(L_{k-1} - x_k), without subtracting two large numbers; loss = (sum of the terms +
// [z < n] L_{-1}) / (z + [z < n]) (crm_kernels/ops/pqm_loss.py).

template <typename acc_t>
struct PqmTrajectory {
  int64_t begin, end, wrong_begin;  // steps [begin, wrong_begin) correct, [wrong_begin, end) wrong
  acc_t log_d0;                     // log D_0
  int64_t terms() const { return (wrong_begin - begin) + (wrong_begin < end ? 1 : 0); }
};

template <typename scalar_t, typename index_t>
PqmTrajectory<at::opmath_type<scalar_t>> pqm_trajectory(const scalar_t* x, const index_t* cu_steps,
                                                         const int64_t* first_error, int64_t b, int64_t num_steps,
                                                         at::opmath_type<scalar_t> margin) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto [begin, end] = clamped_bounds(cu_steps, b, num_steps);
  const int64_t z = first_error[b];
  // Out of range only with validate=False: clamped, so no step outside [begin, end) is read.
  const int64_t wrong_begin = z >= 0 ? std::min(begin + z, end) : end;
  acc_t wrong_lse = -INFINITY;
  for (int64_t w = wrong_begin; w < end; ++w) wrong_lse = logaddexp(wrong_lse, static_cast<acc_t>(x[w]) + margin);
  return {begin, end, wrong_begin, softplus(wrong_lse)};
}

at::Tensor pqm_loss_forward(const at::Tensor& logits, const at::Tensor& cu_steps, const at::Tensor& first_error,
                            double margin, std::optional<double> normalizer) {
  const LossInputs in(logits, cu_steps, std::nullopt, first_error);
  at::Tensor losses = at::empty({in.batch}, in.accumulate_options());
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "pqm_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = in.logits.const_data_ptr<scalar_t>();
    const index_t* cu = in.cu_steps.const_data_ptr<index_t>();
    acc_t* out = losses.mutable_data_ptr<acc_t>();
    parallel_for_trajectories(cu, in.batch, in.logits.numel(), [&](int64_t b_begin, int64_t b_end) {
      for (int64_t b = b_begin; b < b_end; ++b) {
        const auto t = pqm_trajectory(x, cu, in.labels.first_error_ptr(), b, in.logits.numel(), acc_t(margin));
        acc_t log_d = t.log_d0, total = t.wrong_begin < t.end ? t.log_d0 : acc_t(0);
        for (int64_t k = t.begin; k < t.wrong_begin; ++k) {
          const acc_t x_k = static_cast<acc_t>(x[k]), term = softplus(log_d - x_k);
          total += term;
          log_d = x_k + term;
        }
        out[b] = t.terms() > 0 ? total / acc_t(t.terms()) : acc_t(0);
      }
    });
  });
  return reduce_losses(losses, normalizer);
}

at::Tensor pqm_loss_backward(const at::Tensor& grad_losses, const at::Tensor& logits, const at::Tensor& cu_steps,
                             const at::Tensor& first_error, double margin) {
  const LossInputs in(logits, cu_steps, std::nullopt, first_error);
  const at::Tensor upstream = in.per_trajectory(grad_losses, "grad_losses");
  at::Tensor grad_logits = at::zeros_like(in.logits);
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "pqm_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = in.logits.const_data_ptr<scalar_t>();
    const index_t* cu = in.cu_steps.const_data_ptr<index_t>();
    const acc_t* g = upstream.const_data_ptr<acc_t>();
    scalar_t* grad = grad_logits.mutable_data_ptr<scalar_t>();
    parallel_for_trajectories(cu, in.batch, in.logits.numel(), [&](int64_t b_begin, int64_t b_end) {
      std::vector<acc_t> log_d;  // L_k of the trajectory's correct steps
      for (int64_t b = b_begin; b < b_end; ++b) {
        const auto t = pqm_trajectory(x, cu, in.labels.first_error_ptr(), b, in.logits.numel(), acc_t(margin));
        if (t.terms() == 0) continue;
        const acc_t scale = g[b] / acc_t(t.terms());
        log_d.resize(t.wrong_begin - t.begin);
        acc_t previous = t.log_d0;
        for (int64_t k = t.begin; k < t.wrong_begin; ++k) {
          const acc_t x_k = static_cast<acc_t>(x[k]);
          previous = log_d[k - t.begin] = x_k + softplus(previous - x_k);
        }
        // Correct step j: e^{x_j} / D_j - 1 = -sigmoid(L_{j-1} - x_j) from its own term, plus
        // sum_{k > j} e^{x_j - L_k} = e^{x_j + lse_{k > j}(-L_k)} from the later ones.
        acc_t later = -INFINITY;  // lse_{k > j} (-L_k)
        for (int64_t j = t.wrong_begin - 1; j >= t.begin; --j) {
          const acc_t x_j = static_cast<acc_t>(x[j]);
          const acc_t log_d_before = j > t.begin ? log_d[j - 1 - t.begin] : t.log_d0;
          grad[j] = static_cast<scalar_t>(scale * (std::exp(x_j + later) - sigmoid(log_d_before - x_j)));
          later = logaddexp(later, -log_d[j - t.begin]);
        }
        // Wrong step w: e^{x_w + m} (sum_k 1 / D_k + 1 / D_0).
        const acc_t inverse_sum = logaddexp(later, -t.log_d0);
        for (int64_t w = t.wrong_begin; w < t.end; ++w) {
          grad[w] = static_cast<scalar_t>(scale * std::exp(static_cast<acc_t>(x[w]) + acc_t(margin) + inverse_sum));
        }
      }
    });
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(crm_kernels_C, CPU, m) {
  m.impl("prm_loss_forward", &prm_loss_forward);
  m.impl("prm_loss_backward", &prm_loss_backward);
  m.impl("orm_loss_forward", &orm_loss_forward);
  m.impl("orm_loss_backward", &orm_loss_backward);
  m.impl("pqm_loss_forward", &pqm_loss_forward);
  m.impl("pqm_loss_backward", &pqm_loss_backward);
}

}  // namespace crm::cpu
