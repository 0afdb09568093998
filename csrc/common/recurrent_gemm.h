// The recurrent GEMM of one time step of a recurrent cell (LSTM, GRU, RNN), and how
// the CPU shares a step's work out among its threads.
//
// The time loop describes each step's GEMM with a RecurrentGemm. On the CPU the cell
// runs it itself, fused with its pointwise step (recurrent_gemm.cpp: single-threaded
// BLAS calls inside at::parallel_for), whenever fuses() says so:
//   forward   gemm_then_pointwise: each thread multiplies its own batch rows and
//             activates them at once (one fork/join per step instead of two);
//   backward  the pointwise step over all rows (parallel_rows), then gemm_split_k,
//             which splits the GEMM over its inner dimension.
// Otherwise the time loop runs the GEMM through ATen and the pointwise step alone.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "common/types.h"

namespace fusednn {

// output = input W over the step's active rows, all row-major and dense:
// input [rows, k], weight [k, n], output [rows, n].
struct RecurrentGemm {
  const void* input;
  const void* weight;
  void* output;
  int64_t k;
  int64_t n;
};

// Whether the CPU can run `rows` rows of this GEMM itself: float32 and float64 where
// torch's BLAS is there, nonempty, and within BLAS's int sizes.
bool fuses(Storage storage, int64_t rows, const RecurrentGemm& g);

// Rows [row_begin, row_end) x columns [col_begin, col_end) of the GEMM on the calling
// thread (the callers run inside at::parallel_for, where BLAS does not fork again).
// Only where fuses().
void gemm_block(Storage storage, const RecurrentGemm& g, int64_t row_begin, int64_t row_end, int64_t col_begin,
                int64_t col_end);

// The forward step: the batch rows split across threads, each thread multiplying its
// rows, then running pointwise(begin, end) on them. [8, H] x [H, 4H] per thread beats
// BLAS's own two-thread split of [16, H] x [H, 4H] (2 threads, B = 16, H = 256: LSTM
// inference 7.8 -> 7.0 ms). Only where fuses().
template <typename Pointwise>
void gemm_then_pointwise(Storage storage, const RecurrentGemm& g, int64_t rows, const Pointwise& pointwise) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (g.k * g.n));  // a share outweighs a wake-up
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    gemm_block(storage, g, begin, end, 0, g.n);
    pointwise(begin, end);
  });
}

// A byte range that gemm_split_k prefetches while it multiplies: what the next
// step's pointwise work reads. An address rather than a pointer: the range may lie
// outside any tensor (before step 0), which a prefetch tolerates and pointer
// arithmetic would not.
struct PrefetchRange {
  std::uintptr_t address;
  int64_t bytes;
};

// The backward step's GEMM over `rows` rows, split over its inner dimension k: each
// thread runs single-threaded BLAS on its contiguous block of W's rows into its own
// partial sum, and the partials are added. Each thread prefetches its share of every
// range in `prefetch` meanwhile. Only where fuses().
void gemm_split_k(Storage storage, const RecurrentGemm& g, int64_t rows, std::initializer_list<PrefetchRange> prefetch);

// Rows per task of a pointwise step: enough units that a thread's share outweighs
// waking it.
inline int64_t grain_rows(int64_t units) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(units, 1)); }

// A pointwise step's rows [0, rows), `units` wide, split across threads:
// rows_of(begin, end) per share.
template <typename Rows>
void parallel_rows(int64_t rows, int64_t units, const Rows& rows_of) {
  at::parallel_for(0, rows, grain_rows(units), [&](int64_t begin, int64_t end) { rows_of(begin, end); });
}

}  // namespace fusednn
