// Math<Vectorized<T>>: the primitives of crm_math.h for at::vec SIMD vectors, so the CPU kernels
// evaluate the shared formulas eight (AVX2) lanes at a time. at::vec calls Sleef, which
// libtorch_cpu exports; without a SIMD build flag at::vec falls back to a plain loop.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "crm_math.h"

namespace crm {

template <typename T>
struct Math<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  static Vec exp(const Vec& x) { return x.exp(); }
  static Vec expm1(const Vec& x) { return x.expm1(); }
  static Vec log(const Vec& x) { return x.log(); }
  // log1p(y) for y in [-1/2, 1], the only range the formulas use (e^-|x| in softplus, -e^a with
  // a < -ln 2 in log1mexp), as 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...) with s = y / (2 + y),
  // |s| <= 1/3. The series is cut where its remainder, at most (1/9)^(n+1) / (2n + 3) * 9/8, is
  // below half an ulp: 7 terms for float (1.6e-8), 16 for double (1.8e-17). With the rounding of
  // s, s^2 and Horner's rule the result is within a few ulps of log1p, relative, over the whole
  // range; tests/test_numerics.py holds softplus to 4 ulps of float64 math. Sleef's log1p, which
  // at::vec calls, took 70% of crm_loss's forward (ten times its exp).
  static Vec log1p(const Vec& y) {
    constexpr int kTerms = sizeof(T) == 4 ? 7 : 16;
    const Vec s = y / (Vec(T(2)) + y);
    const Vec t = s * s;
    Vec series(T(1) / T(2 * kTerms - 1));
    for (int k = kTerms - 2; k >= 0; --k) series = at::vec::fmadd(series, t, Vec(T(1) / T(2 * k + 1)));
    return (s + s) * series;
  }
  static Vec abs(const Vec& x) { return x.abs(); }
  static Vec relu(const Vec& x) { return at::vec::clamp_min(x, Vec(T(0))); }
  // mask: all bits set in the lanes that take a (what Vec comparisons return).
  static Vec select(const Vec& mask, const Vec& a, const Vec& b) { return Vec::blendv(b, a, mask); }
};

// Lane 0 of a vector: a single value evaluated with the vector functions above gets the bits the
// vector paths give it, and avoids libm's scalar log1pf and expf, several times slower.
template <typename T>
T first_lane(const at::vec::Vectorized<T>& v) {
  T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  return lanes[0];
}

}  // namespace crm
