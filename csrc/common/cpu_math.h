// Activation functions of the CPU kernels, written so that loops over them vectorize.
// libm's expf/tanhf do not vectorize without -ffast-math, so float32 uses the versions
// below: branch-free, with value selects (not std::min/max's references, which GCC
// does not if-convert), about 1 ulp, and defined for every input (NaN in, NaN out;
// +-inf saturate). Framework-free.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Entry points whose loops call these carry ISA clones (AVX-512, AVX2, baseline
// x86-64), picked at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FUSEDNN_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDNN_CPU_CLONES
#endif
// Inlined into each clone, so compiled for its ISA.
#define FUSEDNN_INLINE inline __attribute__((always_inline))

namespace fusednn {

// exp(x) for float: Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, and a
// degree-7 polynomial for exp(r) (Cephes' expf coefficients); about 1 ulp.
FUSEDNN_INLINE float exp_float(float x) {
  // Clamp to where 2^k is a normal float. NaN fails `>` and lands on the lower bound,
  // so k stays in range for the int conversion; the last select restores it.
  float c = x > -87.3365447505f ? x : -87.3365447505f;
  c = c < 88.3762626647949f ? c : 88.3762626647949f;
  float k = c * 1.44269504088896341f;
  k = (k + 12582912.0f) - 12582912.0f;  // round to nearest without a libm call
  const float r = (c - k * 0.693359375f) - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k, k in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float result = p * scale;
  return x == x ? result : x;
}

FUSEDNN_INLINE float sigmoid_of(float x) { return 1.0f / (1.0f + exp_float(-x)); }
FUSEDNN_INLINE double sigmoid_of(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// tanh for float: an odd polynomial near 0 (Cephes' tanhf), where 1 - 2/(e^2x + 1)
// would lose relative accuracy, and the exp form elsewhere (NaN passes through it;
// +-inf give +-1).
FUSEDNN_INLINE float tanh_of(float x) {
  const float a = std::fabs(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float large = std::copysign(1.0f - 2.0f / (exp_float(2.0f * a) + 1.0f), x);
  return a < 0.625f ? small : large;
}
FUSEDNN_INLINE double tanh_of(double x) { return std::tanh(x); }

}  // namespace fusednn
