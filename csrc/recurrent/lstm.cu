// CUDA pointwise kernels of one LSTM time step, forward and backward (see lstm.h).
// The GEMMs (input projection, h W_hh^T, projections, weight gradients) run in
// cuBLAS through ATen in lstm.cpp; these kernels fuse everything between them.
// No torch headers: this file compiles with nvcc alone.

#include <cuda_runtime.h>

#include <algorithm>

#include "common/cuda_math.cuh"
#include "recurrent/lstm.h"

namespace fusednn {
namespace lstm {
// A named namespace, not an anonymous one: ptxas reports carry readable kernel names.
namespace kernels {

constexpr int kThreads = 256;
constexpr int kMaxGridRows = 65535;

// grid.x covers the hidden units of a row, grid.y strides over the batch rows.
template <typename T>
__global__ void __launch_bounds__(kThreads) lstm_forward_step_kernel(ForwardStepParams p) {
  using M = accumulate_t<T>;
  const int64_t H = p.hidden;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= H) return;
  // saved_gates may alias input_gates, so neither is __restrict__; each thread reads
  // its four gates before writing them.
  const T* input_gates = static_cast<const T*>(p.input_gates);
  const T* hidden_gates = static_cast<const T*>(p.hidden_gates);
  const T* bias = static_cast<const T*>(p.bias);
  M bi = M(0), bf = M(0), bg = M(0), bo = M(0);
  if (bias) bi = load(bias + j), bf = load(bias + H + j), bg = load(bias + 2 * H + j), bo = load(bias + 3 * H + j);
  M* saved_gates = static_cast<M*>(p.saved_gates);
  M* saved_cell = static_cast<M*>(p.saved_cell);
  M* cell = static_cast<M*>(p.cell);
  T* hidden_out = static_cast<T*>(p.hidden_out);
  T* hidden_last = static_cast<T*>(p.hidden_last);
  for (int64_t b = blockIdx.y; b < p.rows; b += gridDim.y) {
    const int64_t e = b * H + j;
    if (b >= p.active_rows) {  // past the end of its sequence: zeros, state untouched
      store(hidden_out + e, M(0));
      if (saved_cell) saved_cell[e] = M(0);
      if (saved_gates) {
        M* sg = saved_gates + b * 4 * H + j;
        sg[0] = sg[H] = sg[2 * H] = sg[3 * H] = M(0);
      }
      continue;
    }
    const T* gx = input_gates + b * 4 * H + j;
    const T* gh = hidden_gates + b * 4 * H + j;
    const M i = sigmoid_of(load(gx) + load(gh) + bi);
    const M f = sigmoid_of(load(gx + H) + load(gh + H) + bf);
    const M g = tanh_of(load(gx + 2 * H) + load(gh + 2 * H) + bg);
    const M o = sigmoid_of(load(gx + 3 * H) + load(gh + 3 * H) + bo);
    const M c = f * cell[e] + i * g;
    const M h = o * tanh_of(c);
    cell[e] = c;
    if (saved_cell) saved_cell[e] = c;
    if (saved_gates) {
      M* sg = saved_gates + b * 4 * H + j;
      sg[0] = i;
      sg[H] = f;
      sg[2 * H] = g;
      sg[3 * H] = o;
    }
    store(hidden_out + e, h);
    if (hidden_last) store(hidden_last + e, h);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) lstm_backward_step_kernel(BackwardStepParams p) {
  using M = accumulate_t<T>;
  const int64_t H = p.hidden;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= H) return;
  const M* __restrict__ saved_gates = static_cast<const M*>(p.saved_gates);
  const M* __restrict__ cell = static_cast<const M*>(p.cell);
  const M* __restrict__ cell_prev = static_cast<const M*>(p.cell_prev);
  const T* __restrict__ grad_output = static_cast<const T*>(p.grad_output);
  const T* __restrict__ grad_hidden = static_cast<const T*>(p.grad_hidden);
  M* __restrict__ grad_cell = static_cast<M*>(p.grad_cell);
  T* __restrict__ grad_gates = static_cast<T*>(p.grad_gates);
  for (int64_t b = blockIdx.y; b < p.rows; b += gridDim.y) {
    const int64_t e = b * H + j;
    T* dg = grad_gates + b * 4 * H + j;
    if (b >= p.active_rows) {
      store(dg, M(0));
      store(dg + H, M(0));
      store(dg + 2 * H, M(0));
      store(dg + 3 * H, M(0));
      continue;
    }
    const M* sg = saved_gates + b * 4 * H + j;
    const M i = sg[0], f = sg[H], g = sg[2 * H], o = sg[3 * H];
    const M tc = tanh_of(cell[e]);
    M dh = load(grad_hidden + e);
    if (grad_output) dh += load(grad_output + e);
    const M dc = grad_cell[e] + dh * o * (M(1) - tc * tc);
    grad_cell[e] = dc * f;
    store(dg, dc * g * i * (M(1) - i));
    store(dg + H, dc * cell_prev[e] * f * (M(1) - f));
    store(dg + 2 * H, dc * i * (M(1) - g * g));
    store(dg + 3 * H, dh * tc * o * (M(1) - o));
  }
}

dim3 step_grid(int64_t rows, int64_t hidden) {
  const int64_t blocks_x = (hidden + kThreads - 1) / kThreads;
  const int64_t blocks_y = std::min<int64_t>(std::max<int64_t>(rows, 1), kMaxGridRows);
  return dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y));
}

template <typename Params, typename Launch>
int launch_typed(const Params& p, Launch&& launch) {
  if (p.rows == 0 || p.hidden == 0) return static_cast<int>(cudaSuccess);
  if (!dispatch_storage<CudaTypes>(p.storage, launch)) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace kernels

int launch_forward_step(const ForwardStepParams& params, CUstream_st* stream) {
  return kernels::launch_typed(params, [&](auto type) {
    using T = typename decltype(type)::type;
    const dim3 grid = kernels::step_grid(params.rows, params.hidden);
    kernels::lstm_forward_step_kernel<T><<<grid, kernels::kThreads, 0, stream>>>(params);
  });
}

int launch_backward_step(const BackwardStepParams& params, CUstream_st* stream) {
  return kernels::launch_typed(params, [&](auto type) {
    using T = typename decltype(type)::type;
    const dim3 grid = kernels::step_grid(params.rows, params.hidden);
    kernels::lstm_backward_step_kernel<T><<<grid, kernels::kThreads, 0, stream>>>(params);
  });
}

}  // namespace lstm
}  // namespace fusednn
