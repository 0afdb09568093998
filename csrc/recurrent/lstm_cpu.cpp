// CPU kernels of the LSTM pointwise steps and the CPU registration of
// fusednn::lstm_forward / fusednn::lstm_backward (the time loop is lstm.cpp).
//
// Each step's recurrent GEMM runs here too (cpu_forward_with_gemm, cpu_backward_with_gemm):
// single-threaded BLAS calls inside at::parallel_for, shared out with the pointwise work.
// Rows are split across threads with at::parallel_for; within a row one loop over
// the hidden units, with non-aliasing pointers so that the compiler vectorizes it.
// float32 uses exp/tanh written out below so that they vectorize too (libm's do
// not without -ffast-math); the float32 entry points are compiled for AVX-512, AVX2
// and baseline x86-64 and picked at load time (target_clones).

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#include <type_traits>

#include "recurrent/lstm.h"
#include "recurrent/lstm_sequence.h"

namespace fusednn {
namespace lstm {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FUSEDNN_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDNN_CPU_CLONES
#endif
#define FUSEDNN_INLINE inline __attribute__((always_inline))

// exp(x) for float: Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, and a
// degree-7 polynomial for exp(r) (Cephes' expf coefficients); about 1 ulp.
FUSEDNN_INLINE float exp_float(float x) {
  x = x < -87.3365447505f ? -87.3365447505f : x;  // value selects (not std::min's references) if-convert
  x = x > 88.3762626647949f ? 88.3762626647949f : x;
  float k = x * 1.44269504088896341f;
  k = (k + 12582912.0f) - 12582912.0f;  // round to nearest without a libm call
  const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
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
  return p * scale;
}

FUSEDNN_INLINE float sigmoid_of(float x) { return 1.0f / (1.0f + exp_float(-x)); }
FUSEDNN_INLINE double sigmoid_of(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// tanh for float: an odd polynomial near 0 (Cephes' tanhf), where 1 - 2/(e^2x + 1)
// would lose relative accuracy, and the exp form elsewhere.
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

template <typename T>
using MathOf = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Where the forward step puts the gate activations.
enum class GateOutput { kNone, kInPlace, kSeparate };

// One batch row of the forward step (see ForwardStepParams for the layout): one
// loop over the hidden units. The pointers come in as __restrict__ arguments (GCC
// does not vectorize the loop when they are read from the params struct); the
// in-place variant reads and writes the gates through the one pointer `act`.
template <typename T, GateOutput kGates, bool kBias>
FUSEDNN_INLINE void forward_row(const T* __restrict__ gx, const T* __restrict__ gh, const T* __restrict__ bias,
                                MathOf<T>* __restrict__ cell, T* __restrict__ h_out, MathOf<T>* __restrict__ act,
                                int64_t H) {
  using M = MathOf<T>;
  for (int64_t j = 0; j < H; ++j) {
    M zi, zf, zg, zo;
    if constexpr (kGates == GateOutput::kInPlace) {  // T == M and act == gx
      zi = act[j], zf = act[H + j], zg = act[2 * H + j], zo = act[3 * H + j];
    } else {
      zi = static_cast<M>(gx[j]), zf = static_cast<M>(gx[H + j]);
      zg = static_cast<M>(gx[2 * H + j]), zo = static_cast<M>(gx[3 * H + j]);
    }
    zi += static_cast<M>(gh[j]), zf += static_cast<M>(gh[H + j]);
    zg += static_cast<M>(gh[2 * H + j]), zo += static_cast<M>(gh[3 * H + j]);
    if constexpr (kBias) {
      zi += static_cast<M>(bias[j]), zf += static_cast<M>(bias[H + j]);
      zg += static_cast<M>(bias[2 * H + j]), zo += static_cast<M>(bias[3 * H + j]);
    }
    const M i = sigmoid_of(zi), f = sigmoid_of(zf), g = tanh_of(zg), o = sigmoid_of(zo);
    const M c = f * cell[j] + i * g;
    cell[j] = c;
    h_out[j] = static_cast<T>(o * tanh_of(c));
    if constexpr (kGates != GateOutput::kNone) {
      act[j] = i, act[H + j] = f, act[2 * H + j] = g, act[3 * H + j] = o;
    }
  }
}

// One batch row of the backward step (see BackwardStepParams).
template <typename T, bool kGradOutput>
FUSEDNN_INLINE void backward_row(const MathOf<T>* __restrict__ sg, const MathOf<T>* __restrict__ cell,
                                 const MathOf<T>* __restrict__ cell_prev, const T* __restrict__ grad_hidden,
                                 const T* __restrict__ grad_output, MathOf<T>* __restrict__ grad_cell,
                                 T* __restrict__ dg, int64_t H) {
  using M = MathOf<T>;
  for (int64_t j = 0; j < H; ++j) {
    M dh = static_cast<M>(grad_hidden[j]);
    if constexpr (kGradOutput) dh += static_cast<M>(grad_output[j]);
    const M i = sg[j], f = sg[H + j], g = sg[2 * H + j], o = sg[3 * H + j];
    const M tc = tanh_of(cell[j]);
    const M dc = grad_cell[j] + dh * o * (M(1) - tc * tc);
    grad_cell[j] = dc * f;
    dg[j] = static_cast<T>(dc * g * i * (M(1) - i));
    dg[H + j] = static_cast<T>(dc * cell_prev[j] * f * (M(1) - f));
    dg[2 * H + j] = static_cast<T>(dc * i * (M(1) - g * g));
    dg[3 * H + j] = static_cast<T>(dh * tc * o * (M(1) - o));
  }
}

template <typename T, bool kBias>
FUSEDNN_INLINE void forward_rows_with_bias(const ForwardStepParams& p, int64_t begin, int64_t end) {
  using M = MathOf<T>;
  const int64_t H = p.hidden;
  for (int64_t b = begin; b < end; ++b) {
    const T* gx = static_cast<const T*>(p.input_gates) + b * 4 * H;
    const T* gh = static_cast<const T*>(p.hidden_gates) + b * 4 * H;
    const T* bias = static_cast<const T*>(p.bias);
    M* cell = static_cast<M*>(p.cell) + b * H;
    T* h_out = static_cast<T*>(p.hidden_out) + b * H;
    M* act = static_cast<M*>(p.saved_gates) + b * 4 * H;
    if (p.saved_gates == nullptr) {
      forward_row<T, GateOutput::kNone, kBias>(gx, gh, bias, cell, h_out, nullptr, H);
    } else if (p.saved_gates == p.input_gates) {  // only where the gates' types agree
      forward_row<T, GateOutput::kInPlace, kBias>(nullptr, gh, bias, cell, h_out, act, H);
    } else {
      forward_row<T, GateOutput::kSeparate, kBias>(gx, gh, bias, cell, h_out, act, H);
    }
    if (p.saved_cell) std::memcpy(static_cast<M*>(p.saved_cell) + b * H, cell, H * sizeof(M));
    if (p.hidden_last) std::memcpy(static_cast<T*>(p.hidden_last) + b * H, h_out, H * sizeof(T));
  }
}
template <typename T>
FUSEDNN_INLINE void forward_rows_impl(const ForwardStepParams& p, int64_t begin, int64_t end) {
  if (p.bias) {
    forward_rows_with_bias<T, true>(p, begin, end);
  } else {
    forward_rows_with_bias<T, false>(p, begin, end);
  }
}
template <typename T>
FUSEDNN_INLINE void backward_rows_impl(const BackwardStepParams& p, int64_t begin, int64_t end) {
  using M = MathOf<T>;
  const int64_t H = p.hidden;
  for (int64_t b = begin; b < end; ++b) {
    const M* sg = static_cast<const M*>(p.saved_gates) + b * 4 * H;
    const M* cell = static_cast<const M*>(p.cell) + b * H;
    const M* cell_prev = static_cast<const M*>(p.cell_prev) + b * H;
    const T* grad_hidden = static_cast<const T*>(p.grad_hidden) + b * H;
    M* grad_cell = static_cast<M*>(p.grad_cell) + b * H;
    T* dg = static_cast<T*>(p.grad_gates) + b * 4 * H;
    if (p.grad_output) {
      const T* grad_output = static_cast<const T*>(p.grad_output) + b * H;
      backward_row<T, true>(sg, cell, cell_prev, grad_hidden, grad_output, grad_cell, dg, H);
    } else {
      backward_row<T, false>(sg, cell, cell_prev, grad_hidden, nullptr, grad_cell, dg, H);
    }
  }
}

template <typename T>
void forward_rows(const ForwardStepParams& p, int64_t begin, int64_t end) {
  forward_rows_impl<T>(p, begin, end);
}
template <typename T>
void backward_rows(const BackwardStepParams& p, int64_t begin, int64_t end) {
  backward_rows_impl<T>(p, begin, end);
}
// The float32 instantiations carry the ISA clones.
FUSEDNN_CPU_CLONES void forward_rows_float(const ForwardStepParams& p, int64_t begin, int64_t end) {
  forward_rows_impl<float>(p, begin, end);
}
FUSEDNN_CPU_CLONES void backward_rows_float(const BackwardStepParams& p, int64_t begin, int64_t end) {
  backward_rows_impl<float>(p, begin, end);
}

// Rows per task: enough hidden units that a thread's share outweighs waking it.
int64_t grain_rows(int64_t hidden) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(hidden, 1)); }

template <typename Params, typename Rows>
void run_rows(const Params& p, Rows rows) {
  at::parallel_for(0, p.active_rows, grain_rows(p.hidden), [&](int64_t begin, int64_t end) { rows(p, begin, end); });
}

int64_t element_size(Storage storage) {
  return storage == Storage::kFloat64 ? 8 : storage == Storage::kFloat32 ? 4 : 2;
}

void zero_inactive_forward(const ForwardStepParams& p);
void zero_inactive_backward(const BackwardStepParams& p);

void cpu_forward_step(const ForwardStepParams& p) {
  switch (p.storage) {
    case Storage::kFloat32: run_rows(p, forward_rows_float); break;
    case Storage::kFloat64: run_rows(p, forward_rows<double>); break;
    case Storage::kFloat16: run_rows(p, forward_rows<c10::Half>); break;
    case Storage::kBFloat16: run_rows(p, forward_rows<c10::BFloat16>); break;
  }
  zero_inactive_forward(p);
}

// Rows past the end of their sequence: zero outputs and workspace, state untouched.
void zero_inactive_forward(const ForwardStepParams& p) {
  const int64_t inactive = p.rows - p.active_rows;
  if (inactive > 0) {
    const int64_t storage_bytes = element_size(p.storage);
    const int64_t math_bytes = p.storage == Storage::kFloat64 ? 8 : 4;
    const int64_t H = p.hidden;
    std::memset(static_cast<char*>(p.hidden_out) + p.active_rows * H * storage_bytes, 0, inactive * H * storage_bytes);
    if (p.saved_cell) {
      std::memset(static_cast<char*>(p.saved_cell) + p.active_rows * H * math_bytes, 0, inactive * H * math_bytes);
    }
    if (p.saved_gates) {
      std::memset(static_cast<char*>(p.saved_gates) + p.active_rows * 4 * H * math_bytes, 0,
                  inactive * 4 * H * math_bytes);
    }
  }
}

void cpu_backward_step(const BackwardStepParams& p) {
  switch (p.storage) {
    case Storage::kFloat32: run_rows(p, backward_rows_float); break;
    case Storage::kFloat64: run_rows(p, backward_rows<double>); break;
    case Storage::kFloat16: run_rows(p, backward_rows<c10::Half>); break;
    case Storage::kBFloat16: run_rows(p, backward_rows<c10::BFloat16>); break;
  }
  zero_inactive_backward(p);
}

void zero_inactive_backward(const BackwardStepParams& p) {
  if (p.active_rows < p.rows) {
    char* dg = static_cast<char*>(p.grad_gates);
    std::memset(dg + p.active_rows * 4 * p.hidden * element_size(p.storage), 0,
                (p.rows - p.active_rows) * 4 * p.hidden * element_size(p.storage));
  }
}

}  // namespace
}  // namespace lstm
}  // namespace fusednn

// Fortran BLAS, as libtorch_cpu exports it where torch is built with one (MKL, OpenBLAS).
// Weak: without it the fused steps decline and the time loop uses ATen's GEMM.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace fusednn {
namespace lstm {
namespace {

// Rows [row_begin, row_end) x columns [col_begin, col_end) of the recurrent GEMM, on the
// calling thread (the callers run inside at::parallel_for, where BLAS does not fork
// again). Row-major output = input W is, in BLAS's column-major terms, output^T = W^T input^T.
template <typename T>
void gemm_block(const RecurrentGemm& g, int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end) {
  const char no = 'N';
  const int ld_out = static_cast<int>(g.n), ld_in = static_cast<int>(g.k), k = static_cast<int>(g.k);
  const int n = static_cast<int>(col_end - col_begin), m = static_cast<int>(row_end - row_begin);
  const T one = 1, zero = 0;
  const T* weight = static_cast<const T*>(g.weight) + col_begin;
  const T* input = static_cast<const T*>(g.input) + row_begin * g.k;
  T* output = static_cast<T*>(g.output) + row_begin * g.n + col_begin;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&no, &no, &n, &m, &k, &one, weight, &ld_out, input, &ld_in, &zero, output, &ld_out);
  } else {
    dgemm_(&no, &no, &n, &m, &k, &one, weight, &ld_out, input, &ld_in, &zero, output, &ld_out);
  }
}

// The fused steps take float32 and float64 with nonempty GEMMs; the rest go through ATen.
bool fuses(Storage storage, int64_t active_rows, const RecurrentGemm& g) {
  const bool has_blas =
      storage == Storage::kFloat32 ? sgemm_ != nullptr : storage == Storage::kFloat64 && dgemm_ != nullptr;
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  return has_blas && active_rows > 0 && g.k > 0 && g.n > 0 && g.input != nullptr && g.weight != nullptr &&
         g.output != nullptr && active_rows <= kIntMax && g.k <= kIntMax && g.n <= kIntMax;
}

// Prefetch the part'th of `parts` shares of a byte range. Prefetches do not fault, so a
// range outside the tensor (before step 0) is harmless.
FUSEDNN_INLINE void prefetch_share(const void* base, int64_t bytes, int64_t part, int64_t parts) {
  const char* p = static_cast<const char*>(base);
  for (int64_t i = bytes * part / parts, end = bytes * (part + 1) / parts; i < end; i += 64) {
    __builtin_prefetch(p + i, 0, 3);
  }
}

// Forward: the batch rows split across threads, each thread multiplying h_{t-1} W_hh^T for
// its rows and activating them at once: one fork/join per step instead of two, and
// [8, H] x [H, 4H] per thread beats BLAS's own two-thread split of [16, H] x [H, 4H]
// (2 threads, B = 16, H = 256: inference 7.8 -> 7.0 ms).
bool cpu_forward_with_gemm(const ForwardStepParams& p, const RecurrentGemm& g) {
  if (!fuses(p.storage, p.active_rows, g)) return false;
  const bool is_float = p.storage == Storage::kFloat32;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (g.k * g.n));  // a share outweighs a wake-up
  at::parallel_for(0, p.active_rows, grain, [&](int64_t begin, int64_t end) {
    if (is_float) {
      gemm_block<float>(g, begin, end, 0, g.n);
      forward_rows_float(p, begin, end);
    } else {
      gemm_block<double>(g, begin, end, 0, g.n);
      forward_rows<double>(p, begin, end);
    }
  });
  zero_inactive_forward(p);
  return true;
}

// One thread's share of the backward GEMM: output = input[:, k_begin:k_end] W[k_begin:k_end, :].
template <typename T>
void gemm_k_block(const RecurrentGemm& g, int64_t rows, int64_t k_begin, int64_t k_end, T* output) {
  const char no = 'N';
  const int n = static_cast<int>(g.n), m = static_cast<int>(rows), ld_in = static_cast<int>(g.k);
  const int k = static_cast<int>(k_end - k_begin);
  const T one = 1, zero = 0;
  const T* weight = static_cast<const T*>(g.weight) + k_begin * g.n;
  const T* input = static_cast<const T*>(g.input) + k_begin;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&no, &no, &n, &m, &k, &one, weight, &n, input, &ld_in, &zero, output, &n);
  } else {
    dgemm_(&no, &no, &n, &m, &k, &one, weight, &n, input, &ld_in, &zero, output, &n);
  }
}

// Backward: dL/dh_{t-1} = dG_t W_hh needs all of dG_t, so the pointwise step runs first
// (rows split), then the GEMM split over its inner dimension (4H), each thread running
// single-threaded BLAS on its contiguous block of W_hh rows into its own partial sum,
// and the partials are added. BLAS's own two-thread run of [16, 4H] x [4H, H] is no
// faster than one thread; splitting the output columns instead wins less (2 threads,
// B = 16, H = 256: backward 16.2 ms through ATen, 15.2 split by columns, 14.1 by 4H).
// While multiplying, each thread prefetches its share of step t-1's saved gates, cells
// and dL/dy (time-major [T, rows, ...] tensors), which the next pointwise step reads from
// memory otherwise (a new 4 KiB page per row defeats the hardware prefetcher).
template <typename T>
void backward_gemm_split_k(const BackwardStepParams& p, const RecurrentGemm& g) {
  const int64_t rows = p.active_rows, n = g.n, K = g.k, H = p.hidden;
  // Chunks of at least 128 (16-aligned) of the inner dimension.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), K / 128));
  thread_local std::vector<T> scratch;  // the partial sums of chunks 1..chunks-1
  scratch.resize((chunks - 1) * rows * n);
  T* partials = scratch.data();  // thread_locals are per thread: pass the pointer
  const int64_t gate_bytes = p.rows * 4 * H * sizeof(T), cell_bytes = p.rows * H * sizeof(T);
  const int64_t output_bytes = p.rows * H * sizeof(T);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    prefetch_share(static_cast<const char*>(p.saved_gates) - gate_bytes, gate_bytes, begin, chunks);
    prefetch_share(static_cast<const char*>(p.cell_prev) - cell_bytes, cell_bytes, begin, chunks);
    if (p.grad_output) prefetch_share(static_cast<const char*>(p.grad_output) - output_bytes, output_bytes, begin, chunks);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t k_begin = K * c / chunks / 16 * 16, k_end = c + 1 == chunks ? K : K * (c + 1) / chunks / 16 * 16;
      T* output = c == 0 ? static_cast<T*>(g.output) : partials + (c - 1) * rows * n;
      gemm_k_block<T>(g, rows, k_begin, k_end, output);
    }
  });
  if (chunks == 1) return;
  const int64_t grain = std::max<int64_t>(1, 32768 / ((chunks - 1) * n));  // small sums stay on this thread
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    T* __restrict__ out = static_cast<T*>(g.output);
    for (int64_t c = 1; c < chunks; ++c) {
      const T* __restrict__ partial = partials + (c - 1) * rows * n;
      for (int64_t i = begin * n; i < end * n; ++i) out[i] += partial[i];
    }
  });
}

bool cpu_backward_with_gemm(const BackwardStepParams& p, const RecurrentGemm& g) {
  if (!fuses(p.storage, p.active_rows, g)) return false;
  if (p.storage == Storage::kFloat32) {
    run_rows(p, backward_rows_float);
    backward_gemm_split_k<float>(p, g);
  } else {
    run_rows(p, backward_rows<double>);
    backward_gemm_split_k<double>(p, g);
  }
  zero_inactive_backward(p);
  return true;
}

constexpr PointwiseSteps kCpuSteps{cpu_forward_step, cpu_backward_step, cpu_forward_with_gemm,
                                   cpu_backward_with_gemm};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cpu(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, at::OptionalIntArrayRef batch_sizes, bool save_workspace) {
  return sequence_forward(kCpuSteps, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save_workspace);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward_cpu(
    const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    at::OptionalIntArrayRef batch_sizes, const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cells,
    const at::Tensor& hidden, bool input_grad) {
  return sequence_backward(kCpuSteps, grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, batch_sizes, y, gates,
                           cells, hidden, input_grad);
}

}  // namespace
}  // namespace lstm
}  // namespace fusednn

TORCH_LIBRARY_IMPL(fusednn, CPU, m) {
  m.impl("lstm_forward", &fusednn::lstm::lstm_forward_cpu);
  m.impl("lstm_backward", &fusednn::lstm::lstm_backward_cpu);
}
