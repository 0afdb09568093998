// CPU kernels of the recurrent cells' pointwise steps (LSTM, GRU, RNN; see cell.h),
// registered as the CPU's steps of the shared time loop (sequence.cpp).
//
// Each step's recurrent GEMM runs here too, shared out with the pointwise work
// (common/recurrent_gemm.h). Rows are split across threads; within a row one loop over
// the hidden units, with non-aliasing pointers so that the compiler vectorizes it.
// float32 uses the activations of common/cpu_math.h, which vectorize, and its entry
// points carry ISA clones.

#include <cstdint>
#include <cstring>

#include "common.h"
#include "common/cpu_math.h"
#include "common/recurrent_gemm.h"
#include "recurrent/cell.h"
#include "recurrent/sequence.h"

namespace fusednn {
namespace recurrent {
namespace {

// Where the forward step puts the gate activations.
enum class GateOutput { kNone, kInPlace, kSeparate };

// One batch row of the LSTM's forward step (see ForwardStepParams for the layout): one
// loop over the hidden units. The pointers come in as __restrict__ arguments (GCC
// does not vectorize the loop when they are read from the params struct); the
// in-place variant reads and writes the gates through the one pointer `act`.
template <typename T, GateOutput kGates, bool kBias>
FUSEDNN_INLINE void lstm_forward_row(const T* __restrict__ gx, const T* __restrict__ gh, const T* __restrict__ bias,
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

// One batch row of the LSTM's backward step (see BackwardStepParams).
template <typename T, bool kGradOutput>
FUSEDNN_INLINE void lstm_backward_row(const accumulate_t<T>* __restrict__ sg, const accumulate_t<T>* __restrict__ cell,
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

// One batch row of the GRU's forward step: gates [r | z | n]; bias [b_r | b_z | b_in | b_hn]
// (cell.h); the state is h in the accumulate type; saves r, z, n and W_hn h + b_hn.
template <typename T, bool kSave, bool kBias>
FUSEDNN_INLINE void gru_forward_row(const T* __restrict__ gx, const T* __restrict__ gh, const T* __restrict__ bias,
                                    accumulate_t<T>* __restrict__ state, T* __restrict__ h_out,
                                    accumulate_t<T>* __restrict__ act, int64_t H) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < H; ++j) {
    M zr = static_cast<M>(gx[j]) + static_cast<M>(gh[j]);
    M zz = static_cast<M>(gx[H + j]) + static_cast<M>(gh[H + j]);
    M xn = static_cast<M>(gx[2 * H + j]), hn = static_cast<M>(gh[2 * H + j]);
    if constexpr (kBias) {
      zr += static_cast<M>(bias[j]), zz += static_cast<M>(bias[H + j]);
      xn += static_cast<M>(bias[2 * H + j]), hn += static_cast<M>(bias[3 * H + j]);
    }
    const M r = sigmoid_of(zr), z = sigmoid_of(zz), n = tanh_of(xn + r * hn);
    const M h = n + z * (state[j] - n);  // (1 - z) n + z h_{t-1}
    state[j] = h;
    h_out[j] = static_cast<T>(h);
    if constexpr (kSave) act[j] = r, act[H + j] = z, act[2 * H + j] = n, act[3 * H + j] = hn;
  }
}

// One batch row of the Elman RNN's forward step: h = tanh(a) or relu(a); saves h.
template <typename T, bool kSave, bool kBias, bool kReLU>
FUSEDNN_INLINE void rnn_forward_row(const T* __restrict__ gx, const T* __restrict__ gh, const T* __restrict__ bias,
                                    T* __restrict__ h_out, accumulate_t<T>* __restrict__ act, int64_t H) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < H; ++j) {
    M a = static_cast<M>(gx[j]) + static_cast<M>(gh[j]);
    if constexpr (kBias) a += static_cast<M>(bias[j]);
    M h;
    if constexpr (kReLU) {
      h = a > M(0) ? a : M(0);
      h = a == a ? h : a;  // NaN stays NaN, as torch's relu
    } else {
      h = tanh_of(a);
    }
    h_out[j] = static_cast<T>(h);
    if constexpr (kSave) act[j] = h;
  }
}

// Rows [begin, end) of one cell's forward step.
template <typename T, bool kBias>
FUSEDNN_INLINE void forward_rows(const ForwardStepParams& p, int64_t begin, int64_t end) {
  using M = accumulate_t<T>;
  const int64_t H = p.hidden, G = gates(p.cell) * H, S = saved_gates(p.cell) * H;
  const T* bias = static_cast<const T*>(p.bias);
  for (int64_t b = begin; b < end; ++b) {
    const T* gx = static_cast<const T*>(p.input_gates) + b * G;
    const T* gh = static_cast<const T*>(p.hidden_gates) + b * G;
    M* state = p.state ? static_cast<M*>(p.state) + b * H : nullptr;
    T* h_out = static_cast<T*>(p.hidden_out) + b * H;
    // (no offset from a null saved_gates: null + n is undefined)
    M* act = p.saved_gates ? static_cast<M*>(p.saved_gates) + b * S : nullptr;
    switch (p.cell) {
      case Cell::kLSTM:
        if (act == nullptr) {
          lstm_forward_row<T, GateOutput::kNone, kBias>(gx, gh, bias, state, h_out, nullptr, H);
        } else if (p.saved_gates == p.input_gates) {  // only where the gates' types agree
          lstm_forward_row<T, GateOutput::kInPlace, kBias>(nullptr, gh, bias, state, h_out, act, H);
        } else {
          lstm_forward_row<T, GateOutput::kSeparate, kBias>(gx, gh, bias, state, h_out, act, H);
        }
        break;
      case Cell::kGRU:
        if (act) {
          gru_forward_row<T, true, kBias>(gx, gh, bias, state, h_out, act, H);
        } else {
          gru_forward_row<T, false, kBias>(gx, gh, bias, state, h_out, nullptr, H);
        }
        break;
      case Cell::kRNNTanh:
      case Cell::kRNNReLU:
        if (p.cell == Cell::kRNNReLU) {
          if (act) {
            rnn_forward_row<T, true, kBias, true>(gx, gh, bias, h_out, act, H);
          } else {
            rnn_forward_row<T, false, kBias, true>(gx, gh, bias, h_out, nullptr, H);
          }
        } else if (act) {
          rnn_forward_row<T, true, kBias, false>(gx, gh, bias, h_out, act, H);
        } else {
          rnn_forward_row<T, false, kBias, false>(gx, gh, bias, h_out, nullptr, H);
        }
        break;
    }
    if (p.saved_state) std::memcpy(static_cast<M*>(p.saved_state) + b * H, state, H * sizeof(M));
    if (p.hidden_last) std::memcpy(static_cast<T*>(p.hidden_last) + b * H, h_out, H * sizeof(T));
  }
}

// One batch row of the GRU's backward step. dh = dL/dh_t from the GEMM, from y_t and
// carried past the GEMM (grad_state, in: from step t+1, out: z dh for step t-1).
template <typename T, bool kGradOutput>
FUSEDNN_INLINE void gru_backward_row(const accumulate_t<T>* __restrict__ sg,
                                     const accumulate_t<T>* __restrict__ h_prev, const T* __restrict__ grad_hidden,
                                     const T* __restrict__ grad_output, accumulate_t<T>* __restrict__ grad_state,
                                     T* __restrict__ dgh, T* __restrict__ dgi, int64_t H) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < H; ++j) {
    M dh = static_cast<M>(grad_hidden[j]) + grad_state[j];
    if constexpr (kGradOutput) dh += static_cast<M>(grad_output[j]);
    const M r = sg[j], z = sg[H + j], n = sg[2 * H + j], hn = sg[3 * H + j];
    grad_state[j] = dh * z;
    const M dan = dh * (M(1) - z) * (M(1) - n * n);     // dL/d(pre-activation of n)
    const M dar = dan * hn * r * (M(1) - r);
    const M daz = dh * (h_prev[j] - n) * z * (M(1) - z);
    dgh[j] = dgi[j] = static_cast<T>(dar);
    dgh[H + j] = dgi[H + j] = static_cast<T>(daz);
    dgh[2 * H + j] = static_cast<T>(dan * r);
    dgi[2 * H + j] = static_cast<T>(dan);
  }
}

// One batch row of the Elman RNN's backward step, from the saved h.
template <typename T, bool kGradOutput, bool kReLU>
FUSEDNN_INLINE void rnn_backward_row(const accumulate_t<T>* __restrict__ sg, const T* __restrict__ grad_hidden,
                                     const T* __restrict__ grad_output, T* __restrict__ dg, int64_t H) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < H; ++j) {
    M dh = static_cast<M>(grad_hidden[j]);
    if constexpr (kGradOutput) dh += static_cast<M>(grad_output[j]);
    const M h = sg[j];
    if constexpr (kReLU) {
      dg[j] = static_cast<T>(h > M(0) ? dh : M(0));
    } else {
      dg[j] = static_cast<T>(dh * (M(1) - h * h));
    }
  }
}

// Rows [begin, end) of a forward or backward step.
template <typename T>
FUSEDNN_INLINE void rows_impl(const ForwardStepParams& p, int64_t begin, int64_t end) {
  if (p.bias) {
    forward_rows<T, true>(p, begin, end);
  } else {
    forward_rows<T, false>(p, begin, end);
  }
}
template <typename T, bool kGradOutput>
FUSEDNN_INLINE void backward_rows(const BackwardStepParams& p, int64_t begin, int64_t end) {
  using M = accumulate_t<T>;
  const int64_t H = p.hidden, G = gates(p.cell) * H, S = saved_gates(p.cell) * H;
  for (int64_t b = begin; b < end; ++b) {
    const M* sg = static_cast<const M*>(p.saved_gates) + b * S;
    const T* grad_hidden = static_cast<const T*>(p.grad_hidden) + b * H;
    const T* grad_output = kGradOutput ? static_cast<const T*>(p.grad_output) + b * H : nullptr;
    T* dg = static_cast<T*>(p.grad_gates) + b * G;
    switch (p.cell) {
      case Cell::kLSTM:
        lstm_backward_row<T, kGradOutput>(sg, static_cast<const M*>(p.state) + b * H,
                                     static_cast<const M*>(p.state_prev) + b * H, grad_hidden, grad_output,
                                     static_cast<M*>(p.grad_state) + b * H, dg, H);
        break;
      case Cell::kGRU:
        gru_backward_row<T, kGradOutput>(sg, static_cast<const M*>(p.state_prev) + b * H, grad_hidden, grad_output,
                                         static_cast<M*>(p.grad_state) + b * H, dg,
                                         static_cast<T*>(p.grad_input_gates) + b * G, H);
        break;
      case Cell::kRNNTanh:
        rnn_backward_row<T, kGradOutput, false>(sg, grad_hidden, grad_output, dg, H);
        break;
      case Cell::kRNNReLU:
        rnn_backward_row<T, kGradOutput, true>(sg, grad_hidden, grad_output, dg, H);
        break;
    }
  }
}
template <typename T>
FUSEDNN_INLINE void rows_impl(const BackwardStepParams& p, int64_t begin, int64_t end) {
  if (p.grad_output) {
    backward_rows<T, true>(p, begin, end);
  } else {
    backward_rows<T, false>(p, begin, end);
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
  zero_rows_after(p.saved_state, p.active_rows, p.rows, p.hidden * accumulate_bytes);
  zero_rows_after(p.saved_gates, p.active_rows, p.rows, saved_gates(p.cell) * p.hidden * accumulate_bytes);
}
void zero_inactive_rows(const BackwardStepParams& p) {
  const int64_t gate_bytes = gates(p.cell) * p.hidden * element_size(p.storage);
  zero_rows_after(p.grad_gates, p.active_rows, p.rows, gate_bytes);
  zero_rows_after(p.grad_input_gates, p.active_rows, p.rows, gate_bytes);
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
// the GEMM split over its inner dimension. Meanwhile the threads prefetch step t-1's
// saved gates, states and dL/dy (time-major [T, rows, ...] tensors, so one step back is
// one step's bytes back).
bool cpu_backward_with_gemm(const BackwardStepParams& p, const RecurrentGemm& g) {
  if (!fuses(p.storage, p.active_rows, g)) return false;
  run_active_rows(p);
  const int64_t accumulate_bytes = element_size(accumulate_storage(p.storage));
  const int64_t gate_bytes = p.rows * saved_gates(p.cell) * p.hidden * accumulate_bytes;
  const int64_t state_bytes = p.state_prev ? p.rows * p.hidden * accumulate_bytes : 0;
  const int64_t output_bytes = p.grad_output ? p.rows * p.hidden * element_size(p.storage) : 0;
  const auto step_before = [](const void* step, int64_t bytes) {
    return PrefetchRange{reinterpret_cast<std::uintptr_t>(step) - static_cast<std::uintptr_t>(bytes), bytes};
  };
  gemm_split_k(p.storage, g, p.active_rows,
               {step_before(p.saved_gates, gate_bytes), step_before(p.state_prev, state_bytes),
                step_before(p.grad_output, output_bytes)});
  zero_inactive_rows(p);
  return true;
}

constexpr PointwiseSteps kCpuSteps{at::kCPU, cpu_step<ForwardStepParams>, cpu_step<BackwardStepParams>,
                                   cpu_forward_with_gemm, cpu_backward_with_gemm};
[[maybe_unused]] const bool kRegistered = register_steps(kCpuSteps);

}  // namespace
}  // namespace recurrent
}  // namespace fusednn
