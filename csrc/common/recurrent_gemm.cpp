// The CPU's recurrent GEMMs (see recurrent_gemm.h), through the Fortran BLAS that
// libtorch_cpu exports where torch is built with one (MKL, OpenBLAS).

#include "common/recurrent_gemm.h"

#include <limits>
#include <type_traits>
#include <vector>

// Weak: without a BLAS, fuses() says no and the time loops use ATen's GEMM.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace fusednn {
namespace {

// Row-major C = A B is, in BLAS's column-major terms, C^T = B^T A^T: B goes first.
template <typename T>
void gemm_row_major(int m, int n, int k, const T* a, int lda, const T* b, int ldb, T* c, int ldc) {
  const char no = 'N';
  const T one = 1, zero = 0;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&no, &no, &n, &m, &k, &one, b, &ldb, a, &lda, &zero, c, &ldc);
  } else {
    dgemm_(&no, &no, &n, &m, &k, &one, b, &ldb, a, &lda, &zero, c, &ldc);
  }
}

template <typename T>
void gemm_block_typed(const RecurrentGemm& g, int64_t row_begin, int64_t row_end, int64_t col_begin,
                      int64_t col_end) {
  const T* input = static_cast<const T*>(g.input) + row_begin * g.k;
  const T* weight = static_cast<const T*>(g.weight) + col_begin;
  T* output = static_cast<T*>(g.output) + row_begin * g.n + col_begin;
  gemm_row_major<T>(static_cast<int>(row_end - row_begin), static_cast<int>(col_end - col_begin),
                    static_cast<int>(g.k), input, static_cast<int>(g.k), weight, static_cast<int>(g.n), output,
                    static_cast<int>(g.n));
}

// One thread's share of the split-K GEMM: output = input[:, k_begin:k_end] W[k_begin:k_end, :].
template <typename T>
void gemm_k_block(const RecurrentGemm& g, int64_t rows, int64_t k_begin, int64_t k_end, T* output) {
  const int n = static_cast<int>(g.n);
  gemm_row_major<T>(static_cast<int>(rows), n, static_cast<int>(k_end - k_begin),
                    static_cast<const T*>(g.input) + k_begin, static_cast<int>(g.k),
                    static_cast<const T*>(g.weight) + k_begin * g.n, n, output, n);
}

// Prefetch the part'th of `parts` shares of a byte range. Prefetches do not fault.
inline void prefetch_share(const PrefetchRange& range, int64_t part, int64_t parts) {
  for (int64_t i = range.bytes * part / parts, end = range.bytes * (part + 1) / parts; i < end; i += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(range.address + static_cast<std::uintptr_t>(i)), 0, 3);
  }
}

// BLAS's own two-thread run of [16, 4H] x [4H, H] is no faster than one thread;
// splitting the output columns instead wins less (2 threads, B = 16, H = 256: LSTM
// backward 16.2 ms through ATen, 15.2 split by columns, 14.1 by 4H). The prefetches
// matter because the next pointwise step reads a new 4 KiB page per row, which
// defeats the hardware prefetcher.
template <typename T>
void gemm_split_k_typed(const RecurrentGemm& g, int64_t rows, std::initializer_list<PrefetchRange> prefetch) {
  const int64_t n = g.n, K = g.k;
  // Chunks of at least 128 (16-aligned) of the inner dimension.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), K / 128));
  thread_local std::vector<T> scratch;  // the partial sums of chunks 1..chunks-1
  scratch.resize((chunks - 1) * rows * n);
  T* partials = scratch.data();  // thread_locals are per thread: pass the pointer
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (const PrefetchRange& range : prefetch) prefetch_share(range, begin, chunks);
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

}  // namespace

bool fuses(Storage storage, int64_t rows, const RecurrentGemm& g) {
  const bool has_blas =
      storage == Storage::kFloat32 ? sgemm_ != nullptr : storage == Storage::kFloat64 && dgemm_ != nullptr;
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  return has_blas && rows > 0 && g.k > 0 && g.n > 0 && g.input != nullptr && g.weight != nullptr &&
         g.output != nullptr && rows <= kIntMax && g.k <= kIntMax && g.n <= kIntMax;
}

void gemm_block(Storage storage, const RecurrentGemm& g, int64_t row_begin, int64_t row_end, int64_t col_begin,
                int64_t col_end) {
  if (storage == Storage::kFloat32) {
    gemm_block_typed<float>(g, row_begin, row_end, col_begin, col_end);
  } else {
    gemm_block_typed<double>(g, row_begin, row_end, col_begin, col_end);
  }
}

void gemm_split_k(Storage storage, const RecurrentGemm& g, int64_t rows,
                  std::initializer_list<PrefetchRange> prefetch) {
  if (storage == Storage::kFloat32) {
    gemm_split_k_typed<float>(g, rows, prefetch);
  } else {
    gemm_split_k_typed<double>(g, rows, prefetch);
  }
}

}  // namespace fusednn
