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
  static Vec log1p(const Vec& x) { return x.log1p(); }
  static Vec abs(const Vec& x) { return x.abs(); }
  static Vec relu(const Vec& x) { return at::vec::clamp_min(x, Vec(T(0))); }
  // mask: all bits set in the lanes that take a (what Vec comparisons return).
  static Vec select(const Vec& mask, const Vec& a, const Vec& b) { return Vec::blendv(b, a, mask); }
};

}  // namespace crm
