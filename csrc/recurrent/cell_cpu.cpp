// CPU kernels of the recurrent cells' pointwise steps (LSTM, GRU, RNN; see cell.h),
// registered as the CPU's steps of the shared time loop (sequence.cpp).
//
// Each float32/float64 step's recurrent GEMM runs here too, split with the pointwise work
// by hidden units (common/recurrent_gemm.h). Within a row, one loop over the units, with
// non-aliasing pointers so that the compiler vectorizes it.
// float32 uses the activations of common/cpu_math.h, which vectorize, and its entry
// points carry ISA clones.

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

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

// The row functions below run units [j0, j0 + n) of one batch row. Every gate block comes
// as a pointer of its own, already offset to unit j0 and __restrict__: with one pointer
// per buffer and the blocks H apart, GCC cannot prove that a store to one block misses
// the others and leaves the loop scalar.
template <typename T>
struct Blocks {  // G gate blocks of one row: block k at base + k * stride
  T* base;
  int64_t stride;
  T* operator[](int64_t k) const { return base + k * stride; }
};

// The LSTM's forward step. In place (gates read from and activations written to `act`),
// gx is null.
template <typename T, GateOutput kGates, bool kBias>
FUSEDNN_INLINE void lstm_forward_units(
    const T* __restrict__ xi, const T* __restrict__ xf, const T* __restrict__ xg, const T* __restrict__ xo,
    const T* __restrict__ hi, const T* __restrict__ hf, const T* __restrict__ hg, const T* __restrict__ ho,
    const T* __restrict__ bi, const T* __restrict__ bf, const T* __restrict__ bg, const T* __restrict__ bo,
    accumulate_t<T>* __restrict__ cell, T* __restrict__ h_out, accumulate_t<T>* __restrict__ ai,
    accumulate_t<T>* __restrict__ af, accumulate_t<T>* __restrict__ ag, accumulate_t<T>* __restrict__ ao,
    int64_t n) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < n; ++j) {
    M zi, zf, zg, zo;
    if constexpr (kGates == GateOutput::kInPlace) {  // T == M
      zi = ai[j], zf = af[j], zg = ag[j], zo = ao[j];
    } else {
      zi = static_cast<M>(xi[j]), zf = static_cast<M>(xf[j]), zg = static_cast<M>(xg[j]), zo = static_cast<M>(xo[j]);
    }
    zi += static_cast<M>(hi[j]), zf += static_cast<M>(hf[j]), zg += static_cast<M>(hg[j]), zo += static_cast<M>(ho[j]);
    if constexpr (kBias) {
      zi += static_cast<M>(bi[j]), zf += static_cast<M>(bf[j]), zg += static_cast<M>(bg[j]), zo += static_cast<M>(bo[j]);
    }
    const M i = sigmoid_of(zi), f = sigmoid_of(zf), g = tanh_of(zg), o = sigmoid_of(zo);
    const M c = f * cell[j] + i * g;
    cell[j] = c;
    h_out[j] = static_cast<T>(o * tanh_of(c));
    if constexpr (kGates != GateOutput::kNone) ai[j] = i, af[j] = f, ag[j] = g, ao[j] = o;
  }
}
template <typename T, GateOutput kGates, bool kBias>
FUSEDNN_INLINE void lstm_forward_row(Blocks<const T> gx, Blocks<const T> gh, Blocks<const T> bias,
                                     accumulate_t<T>* cell, T* h_out, Blocks<accumulate_t<T>> act, int64_t n) {
  lstm_forward_units<T, kGates, kBias>(gx[0], gx[1], gx[2], gx[3], gh[0], gh[1], gh[2], gh[3], bias[0], bias[1],
                                       bias[2], bias[3], cell, h_out, act[0], act[1], act[2], act[3], n);
}

// The GRU's forward step: gates [r | z | n]; bias [b_r | b_z | b_in | b_hn] (cell.h); the
// state is h in the accumulate type; saves r, z, n and W_hn h + b_hn.
template <typename T, bool kSave, bool kBias>
FUSEDNN_INLINE void gru_forward_units(
    const T* __restrict__ xr, const T* __restrict__ xz, const T* __restrict__ xn, const T* __restrict__ hr,
    const T* __restrict__ hz, const T* __restrict__ hn_, const T* __restrict__ br, const T* __restrict__ bz,
    const T* __restrict__ bin, const T* __restrict__ bhn, accumulate_t<T>* __restrict__ state, T* __restrict__ h_out,
    accumulate_t<T>* __restrict__ ar, accumulate_t<T>* __restrict__ az, accumulate_t<T>* __restrict__ an,
    accumulate_t<T>* __restrict__ ahn, int64_t n) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < n; ++j) {
    M zr = static_cast<M>(xr[j]) + static_cast<M>(hr[j]);
    M zz = static_cast<M>(xz[j]) + static_cast<M>(hz[j]);
    M x_n = static_cast<M>(xn[j]), h_n = static_cast<M>(hn_[j]);
    if constexpr (kBias) {
      zr += static_cast<M>(br[j]), zz += static_cast<M>(bz[j]);
      x_n += static_cast<M>(bin[j]), h_n += static_cast<M>(bhn[j]);
    }
    const M r = sigmoid_of(zr), z = sigmoid_of(zz), g = tanh_of(x_n + r * h_n);
    const M h = g + z * (state[j] - g);  // (1 - z) n + z h_{t-1}
    state[j] = h;
    h_out[j] = static_cast<T>(h);
    if constexpr (kSave) ar[j] = r, az[j] = z, an[j] = g, ahn[j] = h_n;
  }
}
template <typename T, bool kSave, bool kBias>
FUSEDNN_INLINE void gru_forward_row(Blocks<const T> gx, Blocks<const T> gh, Blocks<const T> bias,
                                    accumulate_t<T>* state, T* h_out, Blocks<accumulate_t<T>> act, int64_t n) {
  gru_forward_units<T, kSave, kBias>(gx[0], gx[1], gx[2], gh[0], gh[1], gh[2], bias[0], bias[1], bias[2], bias[3],
                                     state, h_out, act[0], act[1], act[2], act[3], n);
}

// The Elman RNN's forward step: h = tanh(a) or relu(a); saves h.
template <typename T, bool kSave, bool kBias, bool kReLU>
FUSEDNN_INLINE void rnn_forward_row(const T* __restrict__ gx, const T* __restrict__ gh, const T* __restrict__ bias,
                                    T* __restrict__ h_out, accumulate_t<T>* __restrict__ act, int64_t n) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < n; ++j) {
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

// Units [j0, j0 + n) of batch row b of one cell's forward step; gh points at the row's
// hidden gates of unit j0, gate blocks hs apart.
template <typename T, bool kBias>
FUSEDNN_INLINE void forward_slice(const ForwardStepParams& p, int64_t b, int64_t j0, int64_t n, const T* gh,
                                  int64_t hs) {
  using M = accumulate_t<T>;
  const int64_t H = p.hidden, G = gates(p.cell) * H, S = saved_gates(p.cell) * H;
  const Blocks<const T> bias{kBias ? static_cast<const T*>(p.bias) + j0 : nullptr, kBias ? H : 0};
  const Blocks<const T> gx{static_cast<const T*>(p.input_gates) + b * G + j0, H};
  const Blocks<const T> ghb{gh, hs};
  M* state = p.state ? static_cast<M*>(p.state) + b * H + j0 : nullptr;
  T* h_out = static_cast<T*>(p.hidden_out) + b * H + j0;
  // (no offset from a null saved_gates: null + n is undefined)
  const Blocks<M> act{p.saved_gates ? static_cast<M*>(p.saved_gates) + b * S + j0 : nullptr, p.saved_gates ? H : 0};
  const Blocks<const T> none{nullptr, 0};
  switch (p.cell) {
    case Cell::kLSTM:
      if (act.base == nullptr) {
        lstm_forward_row<T, GateOutput::kNone, kBias>(gx, ghb, bias, state, h_out, act, n);
      } else if (p.saved_gates == p.input_gates) {  // only where the gates' types agree
        lstm_forward_row<T, GateOutput::kInPlace, kBias>(none, ghb, bias, state, h_out, act, n);
      } else {
        lstm_forward_row<T, GateOutput::kSeparate, kBias>(gx, ghb, bias, state, h_out, act, n);
      }
      break;
    case Cell::kGRU:
      if (act.base) {
        gru_forward_row<T, true, kBias>(gx, ghb, bias, state, h_out, act, n);
      } else {
        gru_forward_row<T, false, kBias>(gx, ghb, bias, state, h_out, act, n);
      }
      break;
    case Cell::kRNNTanh:
      if (act.base) {
        rnn_forward_row<T, true, kBias, false>(gx.base, gh, bias.base, h_out, act.base, n);
      } else {
        rnn_forward_row<T, false, kBias, false>(gx.base, gh, bias.base, h_out, nullptr, n);
      }
      break;
    case Cell::kRNNReLU:
      if (act.base) {
        rnn_forward_row<T, true, kBias, true>(gx.base, gh, bias.base, h_out, act.base, n);
      } else {
        rnn_forward_row<T, false, kBias, true>(gx.base, gh, bias.base, h_out, nullptr, n);
      }
      break;
  }
  if (p.saved_state) std::memcpy(static_cast<M*>(p.saved_state) + b * H + j0, state, n * sizeof(M));
  if (p.hidden_last) std::memcpy(static_cast<T*>(p.hidden_last) + b * H + j0, h_out, n * sizeof(T));
}

// The LSTM's backward step.
template <typename T, bool kGradOutput>
FUSEDNN_INLINE void lstm_backward_units(
    const accumulate_t<T>* __restrict__ si, const accumulate_t<T>* __restrict__ sf,
    const accumulate_t<T>* __restrict__ sg_, const accumulate_t<T>* __restrict__ so,
    const accumulate_t<T>* __restrict__ cell, const accumulate_t<T>* __restrict__ cell_prev,
    const T* __restrict__ grad_hidden, const T* __restrict__ grad_output, accumulate_t<T>* __restrict__ grad_cell,
    T* __restrict__ di, T* __restrict__ df, T* __restrict__ dg, T* __restrict__ do_, int64_t n) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < n; ++j) {
    M dh = static_cast<M>(grad_hidden[j]);
    if constexpr (kGradOutput) dh += static_cast<M>(grad_output[j]);
    const M i = si[j], f = sf[j], g = sg_[j], o = so[j];
    const M tc = tanh_of(cell[j]);
    const M dc = grad_cell[j] + dh * o * (M(1) - tc * tc);
    grad_cell[j] = dc * f;
    di[j] = static_cast<T>(dc * g * i * (M(1) - i));
    df[j] = static_cast<T>(dc * cell_prev[j] * f * (M(1) - f));
    dg[j] = static_cast<T>(dc * i * (M(1) - g * g));
    do_[j] = static_cast<T>(dh * tc * o * (M(1) - o));
  }
}

// The GRU's backward step. dh = dL/dh_t from the GEMM, from y_t and carried past the
// GEMM (grad_state, in: from step t+1, out: z dh for step t-1). dgh: the hidden gates'
// gradients (the recurrent GEMM's), dgi: the input gates'.
template <typename T, bool kGradOutput>
FUSEDNN_INLINE void gru_backward_units(
    const accumulate_t<T>* __restrict__ sr, const accumulate_t<T>* __restrict__ sz,
    const accumulate_t<T>* __restrict__ sn, const accumulate_t<T>* __restrict__ shn,
    const accumulate_t<T>* __restrict__ h_prev, const T* __restrict__ grad_hidden, const T* __restrict__ grad_output,
    accumulate_t<T>* __restrict__ grad_state, T* __restrict__ dhr, T* __restrict__ dhz, T* __restrict__ dhn,
    T* __restrict__ dir, T* __restrict__ diz, T* __restrict__ din, int64_t n) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < n; ++j) {
    M dh = static_cast<M>(grad_hidden[j]) + grad_state[j];
    if constexpr (kGradOutput) dh += static_cast<M>(grad_output[j]);
    const M r = sr[j], z = sz[j], g = sn[j], hn = shn[j];
    grad_state[j] = dh * z;
    const M dan = dh * (M(1) - z) * (M(1) - g * g);  // dL/d(pre-activation of n)
    const M dar = dan * hn * r * (M(1) - r);
    const M daz = dh * (h_prev[j] - g) * z * (M(1) - z);
    dhr[j] = dir[j] = static_cast<T>(dar);
    dhz[j] = diz[j] = static_cast<T>(daz);
    dhn[j] = static_cast<T>(dan * r);
    din[j] = static_cast<T>(dan);
  }
}

// The Elman RNN's backward step, from the saved h.
template <typename T, bool kGradOutput, bool kReLU>
FUSEDNN_INLINE void rnn_backward_row(const accumulate_t<T>* __restrict__ sg, const T* __restrict__ grad_hidden,
                                     const T* __restrict__ grad_output, T* __restrict__ dg, int64_t n) {
  using M = accumulate_t<T>;
  for (int64_t j = 0; j < n; ++j) {
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

// Units [j0, j0 + n) of batch row b of one cell's backward step.
template <typename T, bool kGradOutput>
FUSEDNN_INLINE void backward_slice(const BackwardStepParams& p, int64_t b, int64_t j0, int64_t n) {
  using M = accumulate_t<T>;
  const int64_t H = p.hidden, G = gates(p.cell) * H, S = saved_gates(p.cell) * H;
  const Blocks<const M> sg{static_cast<const M*>(p.saved_gates) + b * S + j0, H};
  const T* grad_hidden = static_cast<const T*>(p.grad_hidden) + b * H + j0;
  const T* grad_output = kGradOutput ? static_cast<const T*>(p.grad_output) + b * H + j0 : nullptr;
  const Blocks<T> dg{static_cast<T*>(p.grad_gates) + b * G + j0, H};
  switch (p.cell) {
    case Cell::kLSTM:
      lstm_backward_units<T, kGradOutput>(sg[0], sg[1], sg[2], sg[3], static_cast<const M*>(p.state) + b * H + j0,
                                          static_cast<const M*>(p.state_prev) + b * H + j0, grad_hidden, grad_output,
                                          static_cast<M*>(p.grad_state) + b * H + j0, dg[0], dg[1], dg[2], dg[3], n);
      break;
    case Cell::kGRU: {
      const Blocks<T> dgi{static_cast<T*>(p.grad_input_gates) + b * G + j0, H};
      gru_backward_units<T, kGradOutput>(sg[0], sg[1], sg[2], sg[3], static_cast<const M*>(p.state_prev) + b * H + j0,
                                         grad_hidden, grad_output, static_cast<M*>(p.grad_state) + b * H + j0, dg[0],
                                         dg[1], dg[2], dgi[0], dgi[1], dgi[2], n);
      break;
    }
    case Cell::kRNNTanh: rnn_backward_row<T, kGradOutput, false>(sg[0], grad_hidden, grad_output, dg[0], n); break;
    case Cell::kRNNReLU: rnn_backward_row<T, kGradOutput, true>(sg[0], grad_hidden, grad_output, dg[0], n); break;
  }
}

// A step's work on rows [row_begin, row_end) x units [j0, j0 + n). `tile` (forward only)
// is the step's GEMM tile of those units, [rows][G][kUnits] from row 0, or null to read
// p.hidden_gates.
template <typename T>
FUSEDNN_INLINE void slices_impl(const ForwardStepParams& p, int64_t row_begin, int64_t row_end, int64_t j0, int64_t n,
                                const T* tile) {
  const int64_t G = gates(p.cell);
  for (int64_t b = row_begin; b < row_end; ++b) {
    const T* gh = tile ? tile + b * G * UnitPanels::kUnits : static_cast<const T*>(p.hidden_gates) + b * G * p.hidden + j0;
    const int64_t hs = tile ? UnitPanels::kUnits : p.hidden;
    if (p.bias) {
      forward_slice<T, true>(p, b, j0, n, gh, hs);
    } else {
      forward_slice<T, false>(p, b, j0, n, gh, hs);
    }
  }
}
template <typename T>
FUSEDNN_INLINE void slices_impl(const BackwardStepParams& p, int64_t row_begin, int64_t row_end, int64_t j0, int64_t n,
                                const T* /*tile*/) {
  for (int64_t b = row_begin; b < row_end; ++b) {
    if (p.grad_output) {
      backward_slice<T, true>(p, b, j0, n);
    } else {
      backward_slice<T, false>(p, b, j0, n);
    }
  }
}

// The float32 instantiations carry the ISA clones (target_clones takes no templates).
FUSEDNN_CPU_CLONES void float_slices(const ForwardStepParams& p, int64_t row_begin, int64_t row_end, int64_t j0,
                                     int64_t n, const float* tile) {
  slices_impl<float>(p, row_begin, row_end, j0, n, tile);
}
FUSEDNN_CPU_CLONES void float_slices(const BackwardStepParams& p, int64_t row_begin, int64_t row_end, int64_t j0,
                                     int64_t n, const float* tile) {
  slices_impl<float>(p, row_begin, row_end, j0, n, tile);
}
template <typename T, typename Params>
void step_slices(const Params& p, int64_t row_begin, int64_t row_end, int64_t j0, int64_t n, const T* tile) {
  if constexpr (std::is_same_v<T, float>) {
    float_slices(p, row_begin, row_end, j0, n, tile);
  } else {
    slices_impl<T>(p, row_begin, row_end, j0, n, tile);
  }
}

// Rows per task of a pointwise step: enough units that a thread's share outweighs waking it.
int64_t grain_rows(int64_t units) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(units, 1)); }

// The active rows of a step (all units), split across threads.
template <typename Params>
void run_active_rows(const Params& p) {
  dispatch_storage<CpuTypes>(p.storage, [&](auto type) {
    using T = typename decltype(type)::type;
    at::parallel_for(0, p.active_rows, grain_rows(p.hidden), [&](int64_t begin, int64_t end) {
      step_slices<T>(p, begin, end, 0, p.hidden, nullptr);
    });
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

// A thread's scratch tile of the step GEMM: [rows][G][kUnits].
template <typename T>
T* scratch_tile(int64_t elements) {
  thread_local std::vector<char> scratch;
  scratch.resize(elements * sizeof(T));
  return reinterpret_cast<T*>(scratch.data());
}

// The forward step split by hidden units: each thread multiplies the active rows by
// its unit blocks of W_hh^T and runs the pointwise step on the tile it just computed.
bool cpu_forward_with_gemm(const ForwardStepParams& p, const StepGemm& g) {
  if (p.storage != Storage::kFloat32 && p.storage != Storage::kFloat64) return false;
  const UnitPanels& w = *g.weight;
  const int64_t rows = p.active_rows, G = gates(p.cell);
  if (rows > 0) {
    dispatch_storage<CpuTypes>(p.storage, [&](auto type) {
      using T = typename decltype(type)::type;
      if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
        at::parallel_for(0, w.blocks(), w.grain(rows), [&](int64_t begin, int64_t end) {
          T* tile = scratch_tile<T>(rows * G * UnitPanels::kUnits);
          for (int64_t block = begin; block < end; ++block) {
            const int64_t j0 = block * UnitPanels::kUnits, n = std::min(UnitPanels::kUnits, p.hidden - j0);
            w.multiply(g.input, g.lda, rows, block, tile);
            step_slices<T>(p, 0, rows, j0, n, tile);
          }
        });
      }
    });
  }
  zero_inactive_rows(p);
  return true;
}

// The backward step split by hidden units: each thread first finishes the previous
// step's GEMM for its units (dL/dh_t = dG_{t+1} W_hh, written to g.output), then runs the
// pointwise step t on them; so a step is one fork/join.
bool cpu_backward_with_gemm(const BackwardStepParams& p, const StepGemm& g) {
  if (p.storage != Storage::kFloat32 && p.storage != Storage::kFloat64) return false;
  const UnitPanels& w = *g.weight;
  dispatch_storage<CpuTypes>(p.storage, [&](auto type) {
    using T = typename decltype(type)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      const int64_t rows = std::max(g.rows, p.active_rows);
      at::parallel_for(0, w.blocks(), w.grain(std::max<int64_t>(rows, 1)), [&](int64_t begin, int64_t end) {
        T* tile = scratch_tile<T>(g.rows * UnitPanels::kUnits);
        for (int64_t block = begin; block < end; ++block) {
          const int64_t j0 = block * UnitPanels::kUnits, n = std::min(UnitPanels::kUnits, p.hidden - j0);
          if (g.input != nullptr && g.rows > 0) {
            w.multiply(g.input, g.lda, g.rows, block, tile);
            T* out = static_cast<T*>(g.output);
            for (int64_t r = 0; r < g.rows; ++r) {
              std::memcpy(out + r * g.ldo + j0, tile + r * UnitPanels::kUnits, n * sizeof(T));
            }
          }
          step_slices<T>(p, 0, p.active_rows, j0, n, static_cast<const T*>(nullptr));
        }
      });
    }
  });
  zero_inactive_rows(p);
  return true;
}

constexpr PointwiseSteps kCpuSteps{at::kCPU, cpu_step<ForwardStepParams>, cpu_step<BackwardStepParams>,
                                   cpu_forward_with_gemm, cpu_backward_with_gemm};
[[maybe_unused]] const bool kRegistered = register_steps(kCpuSteps);

}  // namespace
}  // namespace recurrent
}  // namespace fusednn
