// The element types of the kernels, shared by the CPU and CUDA code. Framework-free
// (no torch, no CUDA headers) so that .cu files compile with nvcc alone.
//
// "Storage" is the dtype of a kernel's inputs, weights and outputs; "accumulate" is
// the type its arithmetic and its saved state use: double for double, float
// otherwise (so float16 and bfloat16 math runs in float32).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace fusednn {

enum class Storage : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

constexpr int64_t element_size(Storage storage) {
  return storage == Storage::kFloat64 ? 8 : storage == Storage::kFloat32 ? 4 : 2;
}

constexpr Storage accumulate_storage(Storage storage) {
  return storage == Storage::kFloat64 ? Storage::kFloat64 : Storage::kFloat32;
}

// The accumulate type of a storage type T (any of a side's TypeMap types).
template <typename T>
using accumulate_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
struct TypeTag {
  using type = T;
};

// One side's C++ type for each Storage value: the CPU and CUDA spell the half types
// differently (c10::Half / __half, c10::BFloat16 / __nv_bfloat16).
template <typename Float32, typename Float64, typename Float16, typename BFloat16>
struct TypeMap {
  using float32 = Float32;
  using float64 = Float64;
  using float16 = Float16;
  using bfloat16 = BFloat16;
};

// Calls f(TypeTag<T>{}) with T the Map's type of `storage`. Returns false, having
// called nothing, for a value outside the enum.
template <typename Map, typename F>
bool dispatch_storage(Storage storage, F&& f) {
  switch (storage) {
    case Storage::kFloat32: std::forward<F>(f)(TypeTag<typename Map::float32>{}); return true;
    case Storage::kFloat64: std::forward<F>(f)(TypeTag<typename Map::float64>{}); return true;
    case Storage::kFloat16: std::forward<F>(f)(TypeTag<typename Map::float16>{}); return true;
    case Storage::kBFloat16: std::forward<F>(f)(TypeTag<typename Map::bfloat16>{}); return true;
  }
  return false;
}

}  // namespace fusednn
