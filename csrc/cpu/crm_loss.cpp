// crm_loss on the CPU: the per-trajectory loss l_i of SPEC 3 (L_S, L_W, L_z) in one pass over the
// steps, and its gradient with respect to the logits in one more; the per-trajectory parts of each
// (L_W, its gradient scale) run SIMD over the trajectories of a range.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "crm_math.h"
#include "sweep.h"
#include "vec_math.h"

namespace crm::cpu {
namespace {

// The per-trajectory labels, read as bool and int64 whatever integer type they came in.
struct Labels {
  const bool* correct;
  const int64_t* first_error;  // nullptr: unknown for every trajectory
  int64_t first_error_of(int64_t b) const { return first_error ? first_error[b] : -1; }
};

// The masks of the per-trajectory epilogues, for trajectories [first, first + count).
template <typename acc_t>
struct LabelMasks {
  at::vec::Vectorized<acc_t> correct, has_first_error;
  LabelMasks(const Labels& labels, int64_t first, int64_t count)
      : correct(lane_mask<acc_t>(labels.correct + first, count, [](bool c) { return c; })),
        has_first_error(labels.first_error
                            ? lane_mask<acc_t>(labels.first_error + first, count, [](int64_t z) { return z >= 0; })
                            : at::vec::Vectorized<acc_t>(acc_t(0))) {}
};

template <typename scalar_t, typename index_t>
void crm_loss_forward_kernel(const scalar_t* logits, const index_t* cu_steps, int64_t num_trajectories,
                             int64_t num_steps, Labels labels, LossWeights weights, at::opmath_type<scalar_t>* losses,
                             at::opmath_type<scalar_t>* log_survival_total) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  // Pass 1 over the steps: each trajectory's -log S(T) and L_z (parked in `losses`).
  struct LossSums {
    const scalar_t* logits;
    const index_t* cu_steps;
    Labels labels;
    acc_t* first_error_nll_out;
    acc_t* log_survival_total;
    LaneSum<acc_t> softplus_sum;
    acc_t first_error_nll = 0;
    int64_t start = 0, first_error_step = -1;  // absolute indices of the first step and of z (-1: none)
    void begin(int64_t b) {
      softplus_sum.reset();
      first_error_nll = 0;
      start = static_cast<int64_t>(cu_steps[b]);
      const int64_t z = labels.first_error_of(b);
      first_error_step = z >= 0 ? start + z : -1;
    }
    void piece(int64_t, int64_t lo, int64_t hi, const acc_t* softplus_values) {
      if (first_error_step < lo || first_error_step >= hi) {
        softplus_sum.add(softplus_values, lo - start, hi - lo);
        return;
      }
      // L_z: the sum of the steps before z, and z's own term.
      const int64_t z = first_error_step;
      softplus_sum.add(softplus_values, lo - start, z - lo);
      // z's term with the vector functions on one lane: libm's scalar log1pf took 5% of the kernels.
      const Vec x(static_cast<acc_t>(logits[z]));
      first_error_nll =
          softplus_sum.total() + first_lane(first_error_term(x, Vec(softplus_values[z - lo]), softplus_tail(x), z, z));
      softplus_sum.add(softplus_values + (z - lo), z - start, hi - z);
    }
    void end(int64_t b) {
      first_error_nll_out[b] = first_error_nll;
      log_survival_total[b] = -softplus_sum.total();
    }
  };
  auto softplus_block = [&](int64_t first, int64_t count, acc_t* values) {
    transform_block(logits + first, count, values, [](const Vec& x) { return softplus(x); });
  };
  parallel_for_trajectories(cu_steps, num_trajectories, num_steps, [&](int64_t b_begin, int64_t b_end) {
    LossSums visitor{logits, cu_steps, labels, losses, log_survival_total};
    sweep<false, index_t, acc_t>(cu_steps, b_begin, b_end, num_steps, softplus_block, visitor);
    // Pass 2 over the range's trajectories, eight (AVX2) at a time: the loss epilogue.
    for_each_vector<acc_t>(b_begin, b_end, [&](int64_t first, int64_t count) {
      const LabelMasks<acc_t> masks(labels, first, count);
      const Vec softplus_sum = Vec(acc_t(0)) - Vec::loadu(log_survival_total + first, count);
      const Vec first_error_nll = Vec::loadu(losses + first, count);
      trajectory_loss(softplus_sum, first_error_nll, masks.correct, masks.has_first_error, weights)
          .store(losses + first, count);
    });
  });
}

template <typename scalar_t, typename index_t>
void crm_loss_backward_kernel(const at::opmath_type<scalar_t>* grad_losses, const scalar_t* logits,
                              const index_t* cu_steps, int64_t num_trajectories, int64_t num_steps, Labels labels,
                              const at::opmath_type<scalar_t>* log_survival_total, LossWeights weights,
                              scalar_t* grad_logits) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  // dl/dx_t = h_t * (coef + [t < z] first_error_grad), and h_z * coef - first_error_grad * sigmoid(-x_z)
  // at t = z, with per-trajectory coef and first_error_grad computed first (SIMD over trajectories).
  struct LossGrad {
    const scalar_t* logits;
    const index_t* cu_steps;
    Labels labels;
    const acc_t* coefs;              // indexed by b - b_begin
    const acc_t* first_error_grads;  // indexed by b - b_begin
    int64_t b_begin;
    scalar_t* grad_logits;
    acc_t coef = 0, first_error_grad = 0;
    int64_t first_error_step = -1;
    void begin(int64_t b) {
      const int64_t z = labels.first_error_of(b);
      first_error_step = z >= 0 ? static_cast<int64_t>(cu_steps[b]) + z : -1;
      coef = coefs[b - b_begin];
      first_error_grad = first_error_grads[b - b_begin];
    }
    void piece(int64_t, int64_t lo, int64_t hi, const acc_t* hazards) {
      const int64_t z = std::clamp(first_error_step, lo, hi);  // this piece's steps before z are [lo, z)
      // step_grad (crm_math.h) split at z: the steps on either side are one multiply each.
      const acc_t from_z = coef, before_z = coef + first_error_grad;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        // Whole vectors with the coefficient chosen per lane, and one partial vector: a loop per
        // side of z left short trajectories (16 steps) mostly in scalar prologues and epilogues.
        constexpr int64_t kLanes = Vec::size();
        const Vec before(before_z), from(from_z);
        const int64_t split = z - lo;  // in [0, 1024]: the piece's steps before z
        for (int64_t i = 0; i < hi - lo; i += kLanes) {
          const int64_t count = std::min(kLanes, hi - lo - i);
          const Vec coefs = i + kLanes <= split ? before
                            : i >= split        ? from
                                                : Vec::blendv(from, before, Vec::arange(acc_t(i), acc_t(1)) < Vec(acc_t(split)));
          (Vec::loadu(hazards + i, count) * coefs).store(grad_logits + lo + i, count);
        }
      } else {
        for (int64_t t = lo; t < z; ++t) grad_logits[t] = static_cast<scalar_t>(before_z * hazards[t - lo]);
        for (int64_t t = z; t < hi; ++t) grad_logits[t] = static_cast<scalar_t>(from_z * hazards[t - lo]);
      }
      if (first_error_step >= lo && first_error_step < hi) {
        const int64_t t = first_error_step;
        const Vec x(static_cast<acc_t>(logits[t]));  // one lane, as in the forward: no scalar expf
        grad_logits[t] = static_cast<scalar_t>(
            first_lane(step_grad(x, Vec(hazards[t - lo]), Vec(coef), Vec(first_error_grad), t, t)));
      }
    }
    void end(int64_t) {}
  };
  auto hazard_block = [&](int64_t first, int64_t count, acc_t* values) {
    transform_block(logits + first, count, values, [](const Vec& x) { return sigmoid(x); });
  };
  parallel_for_trajectories(cu_steps, num_trajectories, num_steps, [&](int64_t b_begin, int64_t b_end) {
    std::vector<acc_t> coefs(b_end - b_begin), first_error_grads(b_end - b_begin);
    for_each_vector<acc_t>(b_begin, b_end, [&](int64_t first, int64_t count) {
      const LabelMasks<acc_t> masks(labels, first, count);
      const Vec upstream = Vec::loadu(grad_losses + first, count);
      const Vec log_survival = Vec::loadu(log_survival_total + first, count);
      (upstream * trajectory_grad_coef(log_survival, masks.correct, weights)).store(coefs.data() + (first - b_begin), count);
      Math<Vec>::select(masks.has_first_error, upstream * Vec(acc_t(weights.first_error)), Vec(acc_t(0)))
          .store(first_error_grads.data() + (first - b_begin), count);
    });
    LossGrad visitor{logits, cu_steps, labels, coefs.data(), first_error_grads.data(), b_begin, grad_logits};
    sweep<false, index_t, acc_t>(cu_steps, b_begin, b_end, num_steps, hazard_block, visitor);
  });
}

std::tuple<at::Tensor, at::Tensor> crm_loss_forward(const at::Tensor& logits, const at::Tensor& cu_steps,
                                                    const at::Tensor& outcome,
                                                    const std::optional<at::Tensor>& first_error, double w_survive,
                                                    double w_wrong, double w_first_error,
    std::optional<double> normalizer) {
  const LossInputs in(logits, cu_steps, outcome, first_error);
  at::Tensor losses = at::empty({in.batch}, in.accumulate_options());
  at::Tensor log_survival_total = at::empty({in.batch}, in.accumulate_options());
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "crm_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    crm_loss_forward_kernel<scalar_t, index_t>(
        in.logits.const_data_ptr<scalar_t>(), in.cu_steps.const_data_ptr<index_t>(), in.batch, in.logits.numel(),
        Labels{in.labels.correct_ptr(), in.labels.first_error_ptr()}, LossWeights{w_survive, w_wrong, w_first_error},
        losses.mutable_data_ptr<acc_t>(), log_survival_total.mutable_data_ptr<acc_t>());
  });
  return {reduce_losses(losses, normalizer), log_survival_total};
}

at::Tensor crm_loss_backward(const at::Tensor& grad_losses, const at::Tensor& logits, const at::Tensor& cu_steps,
                             const at::Tensor& outcome, const std::optional<at::Tensor>& first_error,
                             const at::Tensor& log_survival_total, double w_survive, double w_wrong,
                             double w_first_error) {
  const LossBackwardInputs in(grad_losses, logits, cu_steps, outcome, first_error, log_survival_total);
  at::Tensor grad_logits = at::empty_like(in.logits);
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "crm_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    crm_loss_backward_kernel<scalar_t, index_t>(
        in.grad_losses.const_data_ptr<acc_t>(), in.logits.const_data_ptr<scalar_t>(),
        in.cu_steps.const_data_ptr<index_t>(), in.batch, in.logits.numel(),
        Labels{in.labels.correct_ptr(), in.labels.first_error_ptr()}, in.log_survival_total.const_data_ptr<acc_t>(),
        LossWeights{w_survive, w_wrong, w_first_error}, grad_logits.mutable_data_ptr<scalar_t>());
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(crm_kernels_C, CPU, m) {
  m.impl("crm_loss_forward", &crm_loss_forward);
  m.impl("crm_loss_backward", &crm_loss_backward);
}

}  // namespace crm::cpu
