// The recurrent GEMM of one time step of a recurrent cell (LSTM, GRU, RNN) on the CPU,
// and the oneDNN GEMM of the all-steps products.
//
// A step multiplies a few batch rows (B <= a few hundred) by a weight that stays the same
// for the whole sequence. The CPU splits a step by hidden units, not by rows: the weight
// is packed once per sequence into panels of kUnits units (UnitPanels), each thread
// multiplies all rows by its own panels and runs the cell's pointwise step on the tile
// it just computed, so a step is one fork/join, the gates never round-trip through
// memory, and B = 1 shares out as well as B = 64. The tile kernel is written once with
// GCC vector types and compiled for AVX-512, AVX2 and baseline x86-64, picked at run
// time.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace fusednn {

// A weight [k, groups * units] (row-major; `groups` blocks of `units` columns, e.g. the
// LSTM's gates i, f, g, o of W_hh^T) packed as panels: for each block of kUnits units,
// [k][groups][kUnits] (zeros past `units`). float32 or float64.
class UnitPanels {
 public:
  static constexpr int64_t kUnits = 16;

  // weight: contiguous [k, groups * units] of dtype float32 or float64.
  UnitPanels(const at::Tensor& weight, int64_t groups, int64_t units);
  static bool usable(const at::Tensor& weight);  // float32/float64 CPU, groups in {1, 3, 4}

  int64_t blocks() const { return (units_ + kUnits - 1) / kUnits; }

  // tile[r][g][u] = sum_k input[r * lda + k] * weight[k, g * units + block * kUnits + u]
  // for rows r in [0, rows): tile is [rows][groups][kUnits] of the weight's dtype.
  void multiply(const void* input, int64_t lda, int64_t rows, int64_t block, void* tile) const;

  // Unit blocks per task of at::parallel_for: a share of at least ~64K multiply-adds.
  int64_t grain(int64_t rows) const {
    return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, rows * k_ * groups_ * kUnits));
  }

 private:
  at::Tensor panels_;
  int64_t k_, groups_, units_;
};

// output = input W^T for a weight W [n, k] (nn.Linear's layout) through oneDNN, with W
// reordered once into oneDNN's blocked layout for `rows` rows (torch's
// mkldnn::_reorder_linear_weight and mkldnn::_linear_pointwise, found through the
// dispatcher: oneDNN's own symbols are not exported by libtorch_cpu). For the
// all-steps GEMMs (input projection, input gradient): on AMD CPUs MKL's GEMM takes a
// generic code path. `usable()` is false (and the callers keep at::mm) for anything but
// float32 CPU tensors, or where torch was built without oneDNN.
class OneDnnLinear {
 public:
  static bool usable(const at::Tensor& weight);
  OneDnnLinear(const at::Tensor& weight, int64_t rows);
  // [m, k] (row-major rows, any m) -> a new [m, n] tensor.
  at::Tensor operator()(const at::Tensor& input) const;

 private:
  at::Tensor packed_;
};

}  // namespace fusednn
