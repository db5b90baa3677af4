// The math of docs/spec.md (SPEC) sections 1, 3 and 4, in one place for every compiled backend.
//
// Each formula is a template over a value type T. Math<T> supplies the primitives (exp, log1p,
// ..., and select(mask, a, b) for the branches, so that SIMD lanes can take different ones):
// scalar float and double are specialised here, SIMD vectors in cpu/vec_math.h, so the CPU
// kernels evaluate exactly these expressions lane by lane and the CUDA kernels per thread.
// Comparisons (a > b) give a bool for scalars and a lane mask for vectors. Nothing else in csrc/
// re-derives a formula.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CRM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CRM_HOST_DEVICE inline
#endif

namespace crm {

template <typename T>
struct Math;

template <>
struct Math<float> {
  static CRM_HOST_DEVICE float exp(float x) { return ::expf(x); }
  static CRM_HOST_DEVICE float expm1(float x) { return ::expm1f(x); }
  static CRM_HOST_DEVICE float log(float x) { return ::logf(x); }
  static CRM_HOST_DEVICE float log1p(float x) { return ::log1pf(x); }
  static CRM_HOST_DEVICE float abs(float x) { return ::fabsf(x); }
  // NaN compares false and becomes 0 here; softplus still returns NaN through its log1p term.
  static CRM_HOST_DEVICE float relu(float x) { return x > 0.0f ? x : 0.0f; }
  static CRM_HOST_DEVICE float select(bool mask, float a, float b) { return mask ? a : b; }
};

template <>
struct Math<double> {
  static CRM_HOST_DEVICE double exp(double x) { return ::exp(x); }
  static CRM_HOST_DEVICE double expm1(double x) { return ::expm1(x); }
  static CRM_HOST_DEVICE double log(double x) { return ::log(x); }
  static CRM_HOST_DEVICE double log1p(double x) { return ::log1p(x); }
  static CRM_HOST_DEVICE double abs(double x) { return ::fabs(x); }
  static CRM_HOST_DEVICE double relu(double x) { return x > 0.0 ? x : 0.0; }
  static CRM_HOST_DEVICE double select(bool mask, double a, double b) { return mask ? a : b; }
};

// ---- per element --------------------------------------------------------------------------

// log(1 + exp(-|x|)): the part softplus(x) and softplus(-x) share. exp(-|x|) <= 1 never overflows.
template <typename T>
CRM_HOST_DEVICE T softplus_tail(T x) {
  using M = Math<T>;
  return M::log1p(M::exp(T(0) - M::abs(x)));
}

// softplus(x) = log(1 + e^x) = -log(1 - sigmoid(x)) = -r_t  (SPEC 1). Never log(1 - sigmoid(x)).
template <typename T>
CRM_HOST_DEVICE T softplus(T x) {
  return Math<T>::relu(x) + softplus_tail(x);
}

// softplus(-x) = -log(sigmoid(x)) = -log h_t, from the same tail as softplus(x).
template <typename T>
CRM_HOST_DEVICE T softplus_neg(T x, T tail) {
  return Math<T>::relu(T(0) - x) + tail;
}

// h_t = sigmoid(x) = 1 / (1 + e^-x): e^-x overflows to inf for x << 0 and h becomes 0, as it should.
template <typename T>
CRM_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + Math<T>::exp(T(0) - x));
}

// ---- per trajectory -----------------------------------------------------------------------

// log S(T) is clamped below 0 before L_W and its gradient (SPEC 4): a = 0 means every softplus
// term underflowed, and -log(1 - S) would be +inf. The bound is float32's smallest normal for every
// dtype so all backends agree. NaN must survive the clamp, hence the comparison order.
constexpr double kMaxLogSurvival = -1.17549435e-38;

template <typename T>
CRM_HOST_DEVICE T clamp_log_survival(T log_survival) {
  return Math<T>::select(log_survival > T(kMaxLogSurvival), T(kMaxLogSurvival), log_survival);
}

// log(1 - e^a) for a < 0, split at -ln 2 to stay accurate on both sides (Maechler 2012). Both
// sides are evaluated (SIMD lanes may need either); the side not taken may be -inf, never chosen.
template <typename T>
CRM_HOST_DEVICE T log1mexp(T a) {
  using M = Math<T>;
  return M::select(a > T(-0.693147180559945309), M::log(T(0) - M::expm1(a)), M::log1p(T(0) - M::exp(a)));
}

// L_W = -log(1 - S(T)) of a flawed trajectory (SPEC 3), from a = log S(T).
template <typename T>
CRM_HOST_DEVICE T flawed_loss(T log_survival) {
  return T(0) - log1mexp(clamp_log_survival(log_survival));
}

// dL_W/dx_t = h_t * flawed_grad_scale(a), with -1/expm1(-a) = -S/(1 - S) (SPEC 3): raising x_t
// lowers S and so lowers L_W. For a -> -inf, expm1(-a) = inf and the scale is -0, as it should be.
template <typename T>
CRM_HOST_DEVICE T flawed_grad_scale(T log_survival) {
  return T(-1) / Math<T>::expm1(T(0) - clamp_log_survival(log_survival));
}

struct LossWeights {
  double survive;      // w_S on L_S, correct trajectories
  double wrong;        // w_W on L_W, flawed trajectories
  double first_error;  // w_z on L_z, flawed trajectories whose first wrong step z is known
};

// l_i of SPEC 3 from the trajectory's sums:
//   softplus_sum     = sum_t softplus(x_t) = -log S(T)
//   first_error_nll  = L_z = softplus(-x_z) + sum_{t<z} softplus(x_t)  (ignored unless has_first_error)
// Mask is bool for scalars, a lane mask for SIMD vectors.
template <typename T, typename Mask>
CRM_HOST_DEVICE T trajectory_loss(T softplus_sum, T first_error_nll, Mask correct, Mask has_first_error,
                                  const LossWeights& w) {
  using M = Math<T>;
  const T flawed = T(w.wrong) * flawed_loss(T(0) - softplus_sum) +
                   M::select(has_first_error, T(w.first_error) * first_error_nll, T(0));
  return M::select(correct, T(w.survive) * softplus_sum, flawed);
}

// dl_i/dx_t = h_t * (coef + [t < z] w_z) for t != z, and h_z * coef - w_z * sigmoid(-x_z) at t = z,
// where coef is w_S (correct) or w_W * flawed_grad_scale(a) (flawed). At t = z, h_z - 1 is written
// as -sigmoid(-x_z) because 1 - h_z cancels to 0 in float32 once x_z > 17.
template <typename T, typename Mask>
CRM_HOST_DEVICE T trajectory_grad_coef(T log_survival, Mask correct, const LossWeights& w) {
  return Math<T>::select(correct, T(w.survive), T(w.wrong) * flawed_grad_scale(log_survival));
}

// ---- per step -------------------------------------------------------------------------------

// Step t's term in L_z = softplus(-x_z) + sum_{t<z} softplus(x_t): softplus(x_t) before z,
// softplus(-x_z) = -log h_z at z, nothing after (or anywhere when z = -1, unknown).
template <typename T>
CRM_HOST_DEVICE T first_error_term(T x, T softplus_x, T tail, int64_t t, int64_t z) {
  return t < z ? softplus_x : (t == z ? softplus_neg(x, tail) : T(0));
}

// dl_i/dx_t for step t of a trajectory, from its per-trajectory factors (see trajectory_grad_coef):
// coef = upstream * trajectory_grad_coef, first_error_grad = upstream * w_z where z is known, else 0.
template <typename T>
CRM_HOST_DEVICE T step_grad(T x, T hazard, T coef, T first_error_grad, int64_t t, int64_t z) {
  if (t == z) return coef * hazard - first_error_grad * sigmoid(T(0) - x);
  return t < z ? (coef + first_error_grad) * hazard : coef * hazard;
}

// ---- the baseline objectives (SPEC 7) ------------------------------------------------------

// Binary cross-entropy with logits of a target y in [0, 1]: softplus(x) - y x (PRM per step, ORM
// at the last step), and its derivative in x.
template <typename T>
CRM_HOST_DEVICE T bce_with_logits(T x, T y) {
  return softplus(x) - y * x;
}

template <typename T>
CRM_HOST_DEVICE T bce_with_logits_grad(T x, T y) {
  return sigmoid(x) - y;
}

// log(e^a + e^b), -inf when both are: the step of PQM's running log-sum-exps. NaN in either
// gives NaN (the comparison sends it to `high`, or to `low` and through the exp).
template <typename T>
CRM_HOST_DEVICE T logaddexp(T a, T b) {
  using M = Math<T>;
  const T high = M::select(a > b, a, b), low = M::select(a > b, b, a);
  const T negative_infinity = T(0) - T(INFINITY);
  return M::select(high == negative_infinity, high, high + M::log1p(M::exp(low - high)));
}

}  // namespace crm
