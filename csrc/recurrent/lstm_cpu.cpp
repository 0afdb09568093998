// CPU kernels of the LSTM pointwise steps and the CPU registration of
// fusednn::lstm_forward / fusednn::lstm_backward (the time loop is lstm.cpp).
//
// Each step's recurrent GEMM runs here too, shared out with the pointwise work
// (common/recurrent_gemm.h). Rows are split across threads; within a row one loop over
// the hidden units, with non-aliasing pointers so that the compiler vectorizes it.
// float32 uses the activations of common/cpu_math.h, which vectorize, and its entry
// points carry ISA clones.

#include <torch/library.h>

#include <cstdint>
#include <cstring>

#include "common.h"
#include "common/cpu_math.h"
#include "common/recurrent_gemm.h"
#include "recurrent/lstm.h"
#include "recurrent/lstm_sequence.h"

namespace fusednn {
namespace lstm {
namespace {

// Where the forward step puts the gate activations.
enum class GateOutput { kNone, kInPlace, kSeparate };

// One batch row of the forward step (see ForwardStepParams for the layout): one
// loop over the hidden units. The pointers come in as __restrict__ arguments (GCC
// does not vectorize the loop when they are read from the params struct); the
// in-place variant reads and writes the gates through the one pointer `act`.
template <typename T, GateOutput kGates, bool kBias>
FUSEDNN_INLINE void forward_row(const T* __restrict__ gx, const T* __restrict__ gh, const T* __restrict__ bias,
                                accumulate_t<T>* __restrict__ cell, T* __restrict__ h_out,
                                accumulate_t<T>* __restrict__ act, int64_t H) {
  using M = accumulate_t<T>;
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
FUSEDNN_INLINE void backward_row(const accumulate_t<T>* __restrict__ sg, const accumulate_t<T>* __restrict__ cell,
                                 const accumulate_t<T>* __restrict__ cell_prev, const T* __restrict__ grad_hidden,
                                 const T* __restrict__ grad_output, accumulate_t<T>* __restrict__ grad_cell,
                                 T* __restrict__ dg, int64_t H) {
  using M = accumulate_t<T>;
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
  using M = accumulate_t<T>;
  const int64_t H = p.hidden;
  for (int64_t b = begin; b < end; ++b) {
    const T* gx = static_cast<const T*>(p.input_gates) + b * 4 * H;
    const T* gh = static_cast<const T*>(p.hidden_gates) + b * 4 * H;
    const T* bias = static_cast<const T*>(p.bias);
    M* cell = static_cast<M*>(p.cell) + b * H;
    T* h_out = static_cast<T*>(p.hidden_out) + b * H;
    if (p.saved_gates == nullptr) {  // (no offset from it then: null + n is undefined)
      forward_row<T, GateOutput::kNone, kBias>(gx, gh, bias, cell, h_out, nullptr, H);
    } else if (p.saved_gates == p.input_gates) {  // only where the gates' types agree
      M* act = static_cast<M*>(p.saved_gates) + b * 4 * H;
      forward_row<T, GateOutput::kInPlace, kBias>(nullptr, gh, bias, cell, h_out, act, H);
    } else {
      M* act = static_cast<M*>(p.saved_gates) + b * 4 * H;
      forward_row<T, GateOutput::kSeparate, kBias>(gx, gh, bias, cell, h_out, act, H);
    }
    if (p.saved_cell) std::memcpy(static_cast<M*>(p.saved_cell) + b * H, cell, H * sizeof(M));
    if (p.hidden_last) std::memcpy(static_cast<T*>(p.hidden_last) + b * H, h_out, H * sizeof(T));
  }
}
// Rows [begin, end) of a forward or backward step.
template <typename T>
FUSEDNN_INLINE void rows_impl(const ForwardStepParams& p, int64_t begin, int64_t end) {
  if (p.bias) {
    forward_rows_with_bias<T, true>(p, begin, end);
  } else {
    forward_rows_with_bias<T, false>(p, begin, end);
  }
}
template <typename T>
FUSEDNN_INLINE void rows_impl(const BackwardStepParams& p, int64_t begin, int64_t end) {
  using M = accumulate_t<T>;
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

// The float32 instantiations carry the ISA clones (target_clones takes no templates).
FUSEDNN_CPU_CLONES void float_rows(const ForwardStepParams& p, int64_t begin, int64_t end) {
  rows_impl<float>(p, begin, end);
}
FUSEDNN_CPU_CLONES void float_rows(const BackwardStepParams& p, int64_t begin, int64_t end) {
  rows_impl<float>(p, begin, end);
}
template <typename T, typename Params>
void step_rows(const Params& p, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<T, float>) {
    float_rows(p, begin, end);
  } else {
    rows_impl<T>(p, begin, end);
  }
}

// The active rows of a step, split across threads.
template <typename Params>
void run_active_rows(const Params& p) {
  dispatch_storage<CpuTypes>(p.storage, [&](auto type) {
    using T = typename decltype(type)::type;
    parallel_rows(p.active_rows, p.hidden, [&](int64_t begin, int64_t end) { step_rows<T>(p, begin, end); });
  });
}

// Zeroes rows [active_rows, rows) of a [rows, row_bytes] buffer, if any.
void zero_rows_after(void* base, int64_t active_rows, int64_t rows, int64_t row_bytes) {
  if (base != nullptr && active_rows < rows) {
    std::memset(static_cast<char*>(base) + active_rows * row_bytes, 0, (rows - active_rows) * row_bytes);
  }
}

// Rows past the end of their sequence: zero outputs and workspace, state untouched.
void zero_inactive_rows(const ForwardStepParams& p) {
  const int64_t storage_bytes = element_size(p.storage);
  const int64_t accumulate_bytes = element_size(accumulate_storage(p.storage));
  zero_rows_after(p.hidden_out, p.active_rows, p.rows, p.hidden * storage_bytes);
  zero_rows_after(p.saved_cell, p.active_rows, p.rows, p.hidden * accumulate_bytes);
  zero_rows_after(p.saved_gates, p.active_rows, p.rows, 4 * p.hidden * accumulate_bytes);
}
void zero_inactive_rows(const BackwardStepParams& p) {
  zero_rows_after(p.grad_gates, p.active_rows, p.rows, 4 * p.hidden * element_size(p.storage));
}

template <typename Params>
void cpu_step(const Params& p) {
  run_active_rows(p);
  zero_inactive_rows(p);
}

bool cpu_forward_with_gemm(const ForwardStepParams& p, const RecurrentGemm& g) {
  if (!fuses(p.storage, p.active_rows, g)) return false;
  dispatch_storage<CpuTypes>(p.storage, [&](auto type) {
    using T = typename decltype(type)::type;
    gemm_then_pointwise(p.storage, g, p.active_rows, [&](int64_t begin, int64_t end) { step_rows<T>(p, begin, end); });
  });
  zero_inactive_rows(p);
  return true;
}

// dL/dh_{t-1} = dG_t W_hh needs all of dG_t, so the pointwise step runs first, then
// the GEMM split over 4H. Meanwhile the threads prefetch step t-1's saved gates,
// cells and dL/dy (time-major [T, rows, ...] tensors, so one step back is one step's
// bytes back).
bool cpu_backward_with_gemm(const BackwardStepParams& p, const RecurrentGemm& g) {
  if (!fuses(p.storage, p.active_rows, g)) return false;
  run_active_rows(p);
  const int64_t accumulate_bytes = element_size(accumulate_storage(p.storage));
  const int64_t gate_bytes = p.rows * 4 * p.hidden * accumulate_bytes, cell_bytes = p.rows * p.hidden * accumulate_bytes;
  const int64_t output_bytes = p.grad_output ? p.rows * p.hidden * element_size(p.storage) : 0;
  const auto step_before = [](const void* step, int64_t bytes) {
    return PrefetchRange{reinterpret_cast<std::uintptr_t>(step) - static_cast<std::uintptr_t>(bytes), bytes};
  };
  gemm_split_k(p.storage, g, p.active_rows,
               {step_before(p.saved_gates, gate_bytes), step_before(p.cell_prev, cell_bytes),
                step_before(p.grad_output, output_bytes)});
  zero_inactive_rows(p);
  return true;
}

constexpr PointwiseSteps kCpuSteps{at::kCPU, cpu_step<ForwardStepParams>, cpu_step<BackwardStepParams>,
                                   cpu_forward_with_gemm, cpu_backward_with_gemm};

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
