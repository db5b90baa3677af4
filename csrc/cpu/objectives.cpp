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
#include <tuple>
#include <utility>
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

// Each trajectory's last logit and outcome for trajectories [first, first + count), widened into
// SIMD lanes; an empty trajectory's lane holds NaN (its loss) and last = -1 (no gradient).
template <typename scalar_t, typename index_t, typename acc_t = at::opmath_type<scalar_t>>
struct LastSteps {
  static constexpr int64_t kLanes = at::vec::Vectorized<acc_t>::size();
  int64_t last[kLanes];
  acc_t logit[kLanes] = {}, target[kLanes] = {};
  LastSteps(const scalar_t* x, const index_t* cu_steps, const bool* correct, int64_t first, int64_t count,
            int64_t num_steps) {
    for (int64_t k = 0; k < count; ++k) {
      last[k] = last_step(cu_steps, first + k, num_steps);
      logit[k] = last[k] < 0 ? acc_t(NAN) : static_cast<acc_t>(x[last[k]]);
      target[k] = correct[first + k] ? acc_t(1) : acc_t(0);
    }
  }
};

at::Tensor orm_loss_forward(const at::Tensor& logits, const at::Tensor& cu_steps, const at::Tensor& outcome,
                            std::optional<double> normalizer) {
  const LossInputs in(logits, cu_steps, outcome, std::nullopt);
  at::Tensor losses = at::empty({in.batch}, in.accumulate_options());
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "orm_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    const scalar_t* x = in.logits.const_data_ptr<scalar_t>();
    const index_t* cu = in.cu_steps.const_data_ptr<index_t>();
    acc_t* out = losses.mutable_data_ptr<acc_t>();
    at::parallel_for(0, in.batch, kMinStepsPerRange, [&](int64_t begin, int64_t end) {
      for_each_vector<acc_t>(begin, end, [&](int64_t first, int64_t count) {
        const LastSteps<scalar_t, index_t> steps(x, cu, in.labels.correct_ptr(), first, count, in.logits.numel());
        bce_with_logits(Vec::loadu(steps.logit), Vec::loadu(steps.target)).store(out + first, count);
      });
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
    using Vec = at::vec::Vectorized<acc_t>;
    const scalar_t* x = in.logits.const_data_ptr<scalar_t>();
    const index_t* cu = in.cu_steps.const_data_ptr<index_t>();
    const acc_t* g = upstream.const_data_ptr<acc_t>();
    scalar_t* grad = grad_logits.mutable_data_ptr<scalar_t>();
    const int64_t num_steps = in.logits.numel();
    parallel_for_trajectories(cu, in.batch, num_steps, [&](int64_t b_begin, int64_t b_end) {
      // The steps of this range of trajectories, disjoint from every other range's whatever the
      // offsets hold (sweep.h). With valid offsets every last step lies inside; with offsets that
      // are not (validate=False) a step outside is not written, so no two threads write one step.
      const int64_t lo = clamped_offset(cu, b_begin, 0, num_steps), hi = clamped_offset(cu, b_end, lo, num_steps);
      for_each_vector<acc_t>(b_begin, b_end, [&](int64_t first, int64_t count) {
        const LastSteps<scalar_t, index_t> steps(x, cu, in.labels.correct_ptr(), first, count, num_steps);
        acc_t grads[Vec::size()];
        (Vec::loadu(g + first, count) * bce_with_logits_grad(Vec::loadu(steps.logit), Vec::loadu(steps.target)))
            .store(grads);
        for (int64_t k = 0; k < count; ++k) {
          if (steps.last[k] >= lo && steps.last[k] < hi) grad[steps.last[k]] = static_cast<scalar_t>(grads[k]);
        }
      });
    });
  });
  return grad_logits;
}

// ---- pqm_loss: per trajectory ------------------------------------------------------------------
// For trajectory [begin, end) with first wrong step z (z = n for -1): L_{-1} = log D_0 =
// softplus(lse over the wrong steps of x + margin), and for each correct step k
// L_k = log(D_{k-1} + e^{x_k}) = x_k + softplus(L_{k-1} - x_k), so that its term L_k - x_k is
// softplus(L_{k-1} - x_k), without subtracting two large numbers; loss = (sum of the terms +
// [z < n] L_{-1}) / (z + [z < n]) (crm_kernels/ops/pqm_loss.py).

// A trajectory's steps are a recursion, so the kernels go across trajectories: kLanes consecutive
// ones in SIMD lanes, step i of each at once, the lanes past their own steps masked (scalar libm
// calls per step took 42 ms on a million steps). Each lane's arithmetic is its own trajectory's
// alone, so the bits do not depend on which trajectories share a group, or on the threads.
//
// The forward walks in the accumulation dtype; the backward in float64 for every input dtype, its
// results rounded at the end: its sums e^{u_j} run over every later step, and in float32 the
// rounding of those sums' terms (their exponents are differences of logits near the largest ones)
// put errors of 5e-5 into gradients near 1 on a 700-step trajectory of logits of scale 30, where
// float64 is exact to float32 rounding. It costs 2x (4 lanes of float64 where float32 had 8).
template <typename scalar_t, typename index_t, typename acc_t>
struct PqmLanes {
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t kLanes = Vec::size();
  const scalar_t* x;
  int64_t begin[kLanes] = {}, wrong_begin[kLanes] = {}, end[kLanes] = {};
  int64_t longest_correct = 0, longest_wrong = 0;
  Vec log_d0, terms, has_wrong;  // L_{-1} = log D_0, |C| + [W non-empty], and the mask of W non-empty

  PqmLanes(const scalar_t* logits, const index_t* cu_steps, const int64_t* first_error, int64_t first, int64_t count,
           int64_t num_steps, acc_t margin)
      : x(logits) {
    acc_t term_counts[kLanes] = {}, wrong_flags[kLanes] = {};
    for (int64_t k = 0; k < count; ++k) {
      std::tie(begin[k], end[k]) = clamped_bounds(cu_steps, first + k, num_steps);
      const int64_t z = first_error[first + k];
      // Out of range only with validate=False: clamped, so no step outside the trajectory is read.
      wrong_begin[k] = z >= 0 ? std::min(begin[k] + z, end[k]) : end[k];
      longest_correct = std::max(longest_correct, wrong_begin[k] - begin[k]);
      longest_wrong = std::max(longest_wrong, end[k] - wrong_begin[k]);
      wrong_flags[k] = wrong_begin[k] < end[k] ? acc_t(1) : acc_t(0);
      term_counts[k] = acc_t(wrong_begin[k] - begin[k]) + wrong_flags[k];
    }
    terms = Vec::loadu(term_counts);
    has_wrong = Vec::loadu(wrong_flags) > Vec(acc_t(0.5));
    Vec wrong_lse(-INFINITY);
    for (int64_t i = 0; i < longest_wrong; ++i) {
      const auto [values, active] = wrong_step(i);
      wrong_lse = Math<Vec>::select(active, logaddexp(wrong_lse, values + Vec(margin)), wrong_lse);
    }
    log_d0 = softplus(wrong_lse);  // 0 without wrong steps
  }
  // Step i of each lane's correct (or wrong) steps, and the mask of the lanes that have one.
  std::pair<Vec, Vec> correct_step(int64_t i) const { return step(begin, wrong_begin, i); }
  std::pair<Vec, Vec> wrong_step(int64_t i) const { return step(wrong_begin, end, i); }
  std::pair<Vec, Vec> step(const int64_t* from, const int64_t* to, int64_t i) const {
    acc_t values[kLanes] = {}, active[kLanes] = {};
    for (int64_t k = 0; k < kLanes; ++k) {
      if (from[k] + i < to[k]) {
        values[k] = static_cast<acc_t>(x[from[k] + i]);
        active[k] = acc_t(1);
      }
    }
    return {Vec::loadu(values), Vec::loadu(active) > Vec(acc_t(0.5))};
  }
  // Writes lane k's value to step from[k] + i where it has one.
  template <typename out_t>
  void store(const Vec& value, const int64_t* from, const int64_t* to, int64_t i, out_t* out) const {
    acc_t values[kLanes];
    value.store(values);
    for (int64_t k = 0; k < kLanes; ++k) {
      if (from[k] + i < to[k]) out[from[k] + i] = static_cast<out_t>(values[k]);
    }
  }
};

at::Tensor pqm_loss_forward(const at::Tensor& logits, const at::Tensor& cu_steps, const at::Tensor& first_error,
                            double margin, std::optional<double> normalizer) {
  const LossInputs in(logits, cu_steps, std::nullopt, first_error);
  at::Tensor losses = at::empty({in.batch}, in.accumulate_options());
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "pqm_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    const scalar_t* x = in.logits.const_data_ptr<scalar_t>();
    const index_t* cu = in.cu_steps.const_data_ptr<index_t>();
    acc_t* out = losses.mutable_data_ptr<acc_t>();
    parallel_for_trajectories(cu, in.batch, in.logits.numel(), [&](int64_t b_begin, int64_t b_end) {
      for_each_vector<acc_t>(b_begin, b_end, [&](int64_t first, int64_t count) {
        const PqmLanes<scalar_t, index_t, acc_t> lanes(x, cu, in.labels.first_error_ptr(), first, count,
                                                in.logits.numel(), acc_t(margin));
        const Vec zero(acc_t(0));
        // The initial state's term where there are wrong steps, then each correct step's.
        Vec total = Math<Vec>::select(lanes.has_wrong, lanes.log_d0, zero);
        Vec anchor = lanes.log_d0, offset = zero;  // L_{k-1} = anchor + offset
        for (int64_t i = 0; i < lanes.longest_correct; ++i) {
          const auto [x_i, active] = lanes.correct_step(i);
          const Vec term = softplus((anchor - x_i) + offset);
          total = total + Math<Vec>::select(active, term, zero);
          anchor = Math<Vec>::select(active, x_i, anchor);
          offset = Math<Vec>::select(active, term, offset);
        }
        Math<Vec>::select(lanes.terms > zero, total / lanes.terms, zero).store(out + first, count);
      });
    });
  });
  return reduce_losses(losses, normalizer);
}

at::Tensor pqm_loss_backward(const at::Tensor& grad_losses, const at::Tensor& logits, const at::Tensor& cu_steps,
                             const at::Tensor& first_error, double margin) {
  const LossInputs in(logits, cu_steps, std::nullopt, first_error);
  const at::Tensor upstream = grad_losses.to(at::kDouble).contiguous();
  TORCH_CHECK(upstream.numel() >= in.batch, "pqm_loss_backward: grad_losses has fewer entries than trajectories");
  at::Tensor grad_logits = at::zeros_like(in.logits);
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "pqm_loss_backward", [&] {
    using acc_t = double;
    using Vec = at::vec::Vectorized<acc_t>;
    constexpr int64_t kLanes = Vec::size();
    const scalar_t* x = in.logits.const_data_ptr<scalar_t>();
    const index_t* cu = in.cu_steps.const_data_ptr<index_t>();
    const acc_t* g = upstream.const_data_ptr<acc_t>();
    scalar_t* grad = grad_logits.mutable_data_ptr<scalar_t>();
    parallel_for_trajectories(cu, in.batch, in.logits.numel(), [&](int64_t b_begin, int64_t b_end) {
      std::vector<acc_t> terms;  // t_i = L_i - x_i of every lane, step after step
      for_each_vector<acc_t>(b_begin, b_end, [&](int64_t first, int64_t count) {
        const PqmLanes<scalar_t, index_t, acc_t> lanes(x, cu, in.labels.first_error_ptr(), first, count,
                                                in.logits.numel(), acc_t(margin));
        const Vec zero(acc_t(0));
        const Vec scale = Math<Vec>::select(lanes.terms > zero, Vec::loadu(g + first, count) / lanes.terms, zero);
        terms.resize(lanes.longest_correct * kLanes);
        Vec anchor = lanes.log_d0, offset = zero;
        for (int64_t i = 0; i < lanes.longest_correct; ++i) {
          const auto [x_i, active] = lanes.correct_step(i);
          offset = Math<Vec>::select(active, softplus((anchor - x_i) + offset), offset);
          anchor = Math<Vec>::select(active, x_i, anchor);
          offset.store(terms.data() + i * kLanes);
        }
        // Correct step j: sum_{k > j} e^{x_j - L_k} - sigmoid(L_{j-1} - x_j). The sum is e^{u_j}, with
        // u_j = lse_{k > j}(x_j - L_k) = (x_j - x_{j+1}) + logaddexp(-t_{j+1}, u_{j+1}), walked back.
        Vec later = Vec(-INFINITY);  // u_j
        for (int64_t j = lanes.longest_correct - 1; j >= 0; --j) {
          const auto [x_j, active] = lanes.correct_step(j);
          // x_{j-1} and t_{j-1} (L_{-1} and 0 before the first step): L_{j-1} - x_j without L_{j-1}.
          const Vec x_before = j > 0 ? lanes.correct_step(j - 1).first : lanes.log_d0;
          const Vec t_before = j > 0 ? Vec::loadu(terms.data() + (j - 1) * kLanes) : zero;
          const Vec t_j = Vec::loadu(terms.data() + j * kLanes);
          lanes.store(scale * (later.exp() - sigmoid((x_before - x_j) + t_before)), lanes.begin, lanes.wrong_begin, j,
                      grad);
          later = Math<Vec>::select(active, (x_before - x_j) + logaddexp(zero - t_j, later), later);
        }
        // Now u = lse_k(L_{-1} - L_k). Wrong step w: e^{x_w + m} (sum_k e^{-L_k} + e^{-L_{-1}})
        // = e^{x_w + m - L_{-1} + logaddexp(0, u)}.
        const Vec inverse_sum = logaddexp(zero, later);
        for (int64_t i = 0; i < lanes.longest_wrong; ++i) {
          const auto [x_w, active] = lanes.wrong_step(i);
          lanes.store(scale * (((x_w + Vec(acc_t(margin))) - lanes.log_d0) + inverse_sum).exp(), lanes.wrong_begin,
                      lanes.end, i, grad);
        }
      });
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
