// CUDA pointwise kernels of one recurrent time step (LSTM, GRU, RNN), forward and
// backward (see cell.h). The GEMMs (input projection, h W_hh^T, projections, weight
// gradients) run in cuBLAS through ATen in sequence.cpp; these kernels fuse everything
// between them. No torch headers: this file compiles with nvcc alone.

#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "common/cuda_math.cuh"
#include "recurrent/cell.h"

namespace fusednn {
namespace recurrent {
// A named namespace, not an anonymous one: ptxas reports carry readable kernel names.
namespace kernels {

constexpr int kThreads = 256;
constexpr int kMaxGridRows = 65535;

// One hidden unit j of one active row of the forward step: reads the row's gates at
// gx[k * H] / gh[k * H] (k = gate block), updates the state, returns h_t, and saves the
// activations at sg[k * H] when sg is not null. `state` is the cell's state (LSTM: c;
// GRU: h_{t-1}), unused by the RNN.
template <Cell kCell, typename T, typename M = accumulate_t<T>>
__device__ __forceinline__ M forward_unit(const T* gx, const T* gh, const T* bias, int64_t H, M& state, M* sg) {
  if constexpr (kCell == Cell::kLSTM) {
    M bi = M(0), bf = M(0), bg = M(0), bo = M(0);
    if (bias) bi = load(bias), bf = load(bias + H), bg = load(bias + 2 * H), bo = load(bias + 3 * H);
    const M i = sigmoid_of(load(gx) + load(gh) + bi);
    const M f = sigmoid_of(load(gx + H) + load(gh + H) + bf);
    const M g = tanh_of(load(gx + 2 * H) + load(gh + 2 * H) + bg);
    const M o = sigmoid_of(load(gx + 3 * H) + load(gh + 3 * H) + bo);
    const M c = f * state + i * g;
    state = c;
    if (sg) sg[0] = i, sg[H] = f, sg[2 * H] = g, sg[3 * H] = o;
    return o * tanh_of(c);
  } else if constexpr (kCell == Cell::kGRU) {
    M br = M(0), bz = M(0), bin = M(0), bhn = M(0);
    if (bias) br = load(bias), bz = load(bias + H), bin = load(bias + 2 * H), bhn = load(bias + 3 * H);
    const M r = sigmoid_of(load(gx) + load(gh) + br);
    const M z = sigmoid_of(load(gx + H) + load(gh + H) + bz);
    const M hn = load(gh + 2 * H) + bhn;
    const M n = tanh_of(load(gx + 2 * H) + bin + r * hn);
    const M h = n + z * (state - n);
    state = h;
    if (sg) sg[0] = r, sg[H] = z, sg[2 * H] = n, sg[3 * H] = hn;
    return h;
  } else {
    const M a = load(gx) + load(gh) + (bias ? load(bias) : M(0));
    M h;
    if constexpr (kCell == Cell::kRNNReLU) {
      h = a > M(0) ? a : (a == a ? M(0) : a);  // NaN stays NaN, as torch's relu
    } else {
      h = tanh_of(a);
    }
    if (sg) sg[0] = h;
    return h;
  }
}

// grid.x covers the hidden units of a row, grid.y strides over the batch rows.
template <Cell kCell, typename T>
__global__ void __launch_bounds__(kThreads) forward_step_kernel(ForwardStepParams p) {
  using M = accumulate_t<T>;
  constexpr int64_t kGates = gates(kCell), kSaved = saved_gates(kCell);
  const int64_t H = p.hidden;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= H) return;
  // The LSTM's saved_gates may alias input_gates, so neither is __restrict__; each
  // thread reads its gates before writing them.
  const T* input_gates = static_cast<const T*>(p.input_gates);
  const T* hidden_gates = static_cast<const T*>(p.hidden_gates);
  const T* bias = p.bias ? static_cast<const T*>(p.bias) + j : nullptr;
  M* saved_gates = static_cast<M*>(p.saved_gates);
  M* saved_state = static_cast<M*>(p.saved_state);
  M* state = static_cast<M*>(p.state);
  T* hidden_out = static_cast<T*>(p.hidden_out);
  T* hidden_last = static_cast<T*>(p.hidden_last);
  for (int64_t b = blockIdx.y; b < p.rows; b += gridDim.y) {
    const int64_t e = b * H + j;
    M* sg = saved_gates ? saved_gates + b * kSaved * H + j : nullptr;
    if (b >= p.active_rows) {  // past the end of its sequence: zeros, state untouched
      store(hidden_out + e, M(0));
      if (saved_state) saved_state[e] = M(0);
      if (sg) {
        for (int64_t k = 0; k < kSaved; ++k) sg[k * H] = M(0);
      }
      continue;
    }
    M s = state ? state[e] : M(0);
    const M h = forward_unit<kCell, T>(input_gates + b * kGates * H + j, hidden_gates + b * kGates * H + j, bias, H,
                                       s, sg);
    if (state) state[e] = s;
    if (saved_state) saved_state[e] = s;
    store(hidden_out + e, h);
    if (hidden_last) store(hidden_last + e, h);
  }
}

template <Cell kCell, typename T>
__global__ void __launch_bounds__(kThreads) backward_step_kernel(BackwardStepParams p) {
  using M = accumulate_t<T>;
  constexpr int64_t kGates = gates(kCell), kSaved = saved_gates(kCell);
  const int64_t H = p.hidden;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= H) return;
  const M* __restrict__ saved_gates = static_cast<const M*>(p.saved_gates);
  const M* __restrict__ state = static_cast<const M*>(p.state);
  const M* __restrict__ state_prev = static_cast<const M*>(p.state_prev);
  const T* __restrict__ grad_output = static_cast<const T*>(p.grad_output);
  const T* __restrict__ grad_hidden = static_cast<const T*>(p.grad_hidden);
  M* __restrict__ grad_state = static_cast<M*>(p.grad_state);
  T* __restrict__ grad_gates = static_cast<T*>(p.grad_gates);
  T* __restrict__ grad_input_gates = static_cast<T*>(p.grad_input_gates);
  for (int64_t b = blockIdx.y; b < p.rows; b += gridDim.y) {
    const int64_t e = b * H + j;
    T* dg = grad_gates + b * kGates * H + j;
    T* dgi = grad_input_gates ? grad_input_gates + b * kGates * H + j : nullptr;
    if (b >= p.active_rows) {
      for (int64_t k = 0; k < kGates; ++k) {
        store(dg + k * H, M(0));
        if (dgi) store(dgi + k * H, M(0));
      }
      continue;
    }
    const M* sg = saved_gates + b * kSaved * H + j;
    M dh = load(grad_hidden + e);
    if (grad_output) dh += load(grad_output + e);
    if constexpr (kCell == Cell::kLSTM) {
      const M i = sg[0], f = sg[H], g = sg[2 * H], o = sg[3 * H];
      const M tc = tanh_of(state[e]);
      const M dc = grad_state[e] + dh * o * (M(1) - tc * tc);
      grad_state[e] = dc * f;
      store(dg, dc * g * i * (M(1) - i));
      store(dg + H, dc * state_prev[e] * f * (M(1) - f));
      store(dg + 2 * H, dc * i * (M(1) - g * g));
      store(dg + 3 * H, dh * tc * o * (M(1) - o));
    } else if constexpr (kCell == Cell::kGRU) {
      dh += grad_state[e];
      const M r = sg[0], z = sg[H], n = sg[2 * H], hn = sg[3 * H];
      grad_state[e] = dh * z;
      const M dan = dh * (M(1) - z) * (M(1) - n * n);
      const M dar = dan * hn * r * (M(1) - r);
      const M daz = dh * (state_prev[e] - n) * z * (M(1) - z);
      store(dg, dar);
      store(dgi, dar);
      store(dg + H, daz);
      store(dgi + H, daz);
      store(dg + 2 * H, dan * r);
      store(dgi + 2 * H, dan);
    } else if constexpr (kCell == Cell::kRNNReLU) {
      store(dg, sg[0] > M(0) ? dh : M(0));
    } else {
      store(dg, dh * (M(1) - sg[0] * sg[0]));
    }
  }
}

dim3 step_grid(int64_t rows, int64_t hidden) {
  const int64_t blocks_x = (hidden + kThreads - 1) / kThreads;
  const int64_t blocks_y = std::min<int64_t>(std::max<int64_t>(rows, 1), kMaxGridRows);
  return dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y));
}

// Calls launch(TypeTag<T>, std::integral_constant<Cell, c>) for the params' storage and cell.
template <typename Params, typename Launch>
int launch_typed(const Params& p, Launch&& launch) {
  if (p.rows == 0 || p.hidden == 0) return static_cast<int>(cudaSuccess);
  bool cell_known = true;
  const bool known = dispatch_storage<CudaTypes>(p.storage, [&](auto type) {
    switch (p.cell) {
      case Cell::kLSTM: launch(type, std::integral_constant<Cell, Cell::kLSTM>{}); break;
      case Cell::kGRU: launch(type, std::integral_constant<Cell, Cell::kGRU>{}); break;
      case Cell::kRNNTanh: launch(type, std::integral_constant<Cell, Cell::kRNNTanh>{}); break;
      case Cell::kRNNReLU: launch(type, std::integral_constant<Cell, Cell::kRNNReLU>{}); break;
      default: cell_known = false;
    }
  });
  if (!known || !cell_known) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace kernels

int launch_forward_step(const ForwardStepParams& params, CUstream_st* stream) {
  return kernels::launch_typed(params, [&](auto type, auto cell) {
    using T = typename decltype(type)::type;
    const dim3 grid = kernels::step_grid(params.rows, params.hidden);
    kernels::forward_step_kernel<decltype(cell)::value, T><<<grid, kernels::kThreads, 0, stream>>>(params);
  });
}

int launch_backward_step(const BackwardStepParams& params, CUstream_st* stream) {
  return kernels::launch_typed(params, [&](auto type, auto cell) {
    using T = typename decltype(type)::type;
    const dim3 grid = kernels::step_grid(params.rows, params.hidden);
    kernels::backward_step_kernel<decltype(cell)::value, T><<<grid, kernels::kThreads, 0, stream>>>(params);
  });
}

}  // namespace recurrent
}  // namespace fusednn
