// The CPU's recurrent GEMMs (see recurrent_gemm.h).

#include "common/recurrent_gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstring>
#include <type_traits>

#include "common/cpu_math.h"

namespace fusednn {
namespace {

constexpr int64_t kUnits = UnitPanels::kUnits;

// A vector of kVectorBytes / sizeof(T) values of T (one register of the ISA it is compiled
// for), loadable from any T-aligned address.
template <typename T, int kVectorBytes>
struct Vector {
  typedef T type __attribute__((vector_size(kVectorBytes), aligned(sizeof(T))));
};

// Rows [0, MR) of a tile, over k in [0, K): tile[r][g][u] (+)= sum_k input[r][k]
// panel[k][g][u]; `add` accumulates onto the tile. A group's kUnits values span NV vectors;
// the tile is computed NC vector columns at a time (columns c..c+NC-1 of every group), with
// its MR x G x NC accumulators in registers and the panel's vectors of one k used by all
// MR rows.
template <typename T, int kVectorBytes, int G, int MR, int NC>
FUSEDNN_INLINE void tile_rows(const T* __restrict__ input, int64_t lda, const T* __restrict__ panel, int64_t K,
                              T* __restrict__ tile, bool add) {
  using V = typename Vector<T, kVectorBytes>::type;
  constexpr int kLanes = kVectorBytes / sizeof(T), NV = kUnits / kLanes;
  static_assert(NV % NC == 0, "the columns of a group split evenly");
  for (int c = 0; c < NV; c += NC) {
    V acc[MR][G][NC];
    for (int r = 0; r < MR; ++r) {
      for (int g = 0; g < G; ++g) {
        for (int n = 0; n < NC; ++n) {
          acc[r][g][n] = V{};
          if (add) std::memcpy(&acc[r][g][n], tile + (r * G + g) * kUnits + (c + n) * kLanes, sizeof(V));
        }
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      V w[G][NC];
      for (int g = 0; g < G; ++g) {
        for (int n = 0; n < NC; ++n) {
          w[g][n] = *reinterpret_cast<const V*>(panel + (k * G + g) * kUnits + (c + n) * kLanes);
        }
      }
      for (int r = 0; r < MR; ++r) {
        const T s = input[r * lda + k];
        for (int g = 0; g < G; ++g) {
          for (int n = 0; n < NC; ++n) acc[r][g][n] += s * w[g][n];
        }
      }
    }
    for (int r = 0; r < MR; ++r) {
      for (int g = 0; g < G; ++g) {
        for (int n = 0; n < NC; ++n) {
          std::memcpy(tile + (r * G + g) * kUnits + (c + n) * kLanes, &acc[r][g][n], sizeof(V));
        }
      }
    }
  }
}

// Rows per register tile: the MR x G accumulators (one register each) take up to 3/4 of the
// ISA's kRegisters vector registers (at most 8 rows), the rest holding broadcasts (the
// panel's vectors are FMA memory operands). Each accumulator is a dependency chain of one
// FMA per k, so about ten of them are needed to cover the FMA latency of two pipes.
constexpr int rows_per_tile(int kRegisters, int G) { return std::max(1, std::min(8, kRegisters * 3 / 4 / G)); }

// All rows of a tile. The panel is taken in slices of k that fit in half of a 32 KiB L1
// cache, each slice serving every row before the next is read: a whole panel (e.g.
// 256 x 64 floats, 64 KiB) would be read from L2 once per MR rows.
template <typename T, int kVectorBytes, int kRegisters, int G>
FUSEDNN_INLINE void tile_all_rows(const T* input, int64_t lda, int64_t rows, const T* panel, int64_t K, T* tile) {
  constexpr int MR = rows_per_tile(kRegisters, G);
  constexpr int kVectors = kUnits * sizeof(T) / kVectorBytes;  // per group
  constexpr int kTailColumns = G * kVectors <= kRegisters * 3 / 4 ? kVectors : 1;
  constexpr int64_t kSlice = std::max<int64_t>(16, (16 * 1024) / (G * kUnits * sizeof(T)));
  for (int64_t k0 = 0; k0 < K; k0 += kSlice) {
    const int64_t k = std::min(kSlice, K - k0);
    const T* in = input + k0;
    const T* slice = panel + k0 * G * kUnits;
    const bool add = k0 > 0;
    int64_t r = 0;
    for (; r + MR <= rows; r += MR) {
      tile_rows<T, kVectorBytes, G, MR, 1>(in + r * lda, lda, slice, k, tile + r * G * kUnits, add);
    }
    // The remaining rows (B = 1 among them) one at a time, each with the columns of a whole
    // group in flight, so that the FMA chains still number G x NC.
    for (; r < rows; ++r) {
      tile_rows<T, kVectorBytes, G, 1, kTailColumns>(in + r * lda, lda, slice, k, tile + r * G * kUnits, add);
    }
  }
}

template <typename T, int kVectorBytes, int kRegisters>
FUSEDNN_INLINE void multiply_typed(const T* input, int64_t lda, int64_t rows, const T* panel, int64_t K, int64_t G,
                                   T* tile) {
  switch (G) {
    case 1: tile_all_rows<T, kVectorBytes, kRegisters, 1>(input, lda, rows, panel, K, tile); break;
    case 3: tile_all_rows<T, kVectorBytes, kRegisters, 3>(input, lda, rows, panel, K, tile); break;
    default: tile_all_rows<T, kVectorBytes, kRegisters, 4>(input, lda, rows, panel, K, tile);
  }
}

// One entry point per ISA and type; the always-inline kernel above is compiled into each.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FUSEDNN_HAS_ISA_VARIANTS 1
template <typename T>
__attribute__((target("avx512f,avx512vl,avx512dq,fma"))) void multiply_avx512(const T* input, int64_t lda,
                                                                              int64_t rows, const T* panel, int64_t K,
                                                                              int64_t G, T* tile) {
  multiply_typed<T, 64, 32>(input, lda, rows, panel, K, G, tile);
}
template <typename T>
__attribute__((target("avx2,fma"))) void multiply_avx2(const T* input, int64_t lda, int64_t rows, const T* panel,
                                                       int64_t K, int64_t G, T* tile) {
  multiply_typed<T, 32, 16>(input, lda, rows, panel, K, G, tile);
}
#endif
template <typename T>
void multiply_baseline(const T* input, int64_t lda, int64_t rows, const T* panel, int64_t K, int64_t G, T* tile) {
  multiply_typed<T, 16, 16>(input, lda, rows, panel, K, G, tile);
}

enum class Isa { kAvx512, kAvx2, kBaseline };

Isa detect_isa() {
#ifdef FUSEDNN_HAS_ISA_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

template <typename T>
void multiply_dispatch(const T* input, int64_t lda, int64_t rows, const T* panel, int64_t K, int64_t G, T* tile) {
  static const Isa isa = detect_isa();
#ifdef FUSEDNN_HAS_ISA_VARIANTS
  if (isa == Isa::kAvx512) return multiply_avx512<T>(input, lda, rows, panel, K, G, tile);
  if (isa == Isa::kAvx2) return multiply_avx2<T>(input, lda, rows, panel, K, G, tile);
#endif
  multiply_baseline<T>(input, lda, rows, panel, K, G, tile);
}

}  // namespace

bool UnitPanels::usable(const at::Tensor& weight) {
  return weight.defined() && weight.device().is_cpu() &&
         (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble);
}

UnitPanels::UnitPanels(const at::Tensor& weight, int64_t groups, int64_t units)
    : k_(weight.size(0)), groups_(groups), units_(units) {
  TORCH_CHECK(groups == 1 || groups == 3 || groups == 4, "UnitPanels: groups must be 1, 3 or 4; got ", groups);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == groups * units, "UnitPanels: weight must be [k, groups * units]");
  const int64_t padded = blocks() * kUnits;
  // [k, groups, padded units] -> [blocks, k, groups, kUnits], zeros past `units`.
  at::Tensor grouped = at::zeros({k_, groups, padded}, weight.options());
  grouped.narrow(2, 0, units).copy_(weight.view({k_, groups, units}));
  panels_ = grouped.view({k_, groups, blocks(), kUnits}).permute({2, 0, 1, 3}).contiguous();
}

void UnitPanels::multiply(const void* input, int64_t lda, int64_t rows, int64_t block, void* tile) const {
  const int64_t panel_elements = k_ * groups_ * kUnits;
  if (panels_.scalar_type() == at::kFloat) {
    multiply_dispatch<float>(static_cast<const float*>(input), lda, rows,
                             panels_.const_data_ptr<float>() + block * panel_elements, k_, groups_,
                             static_cast<float*>(tile));
  } else {
    multiply_dispatch<double>(static_cast<const double*>(input), lda, rows,
                              panels_.const_data_ptr<double>() + block * panel_elements, k_, groups_,
                              static_cast<double*>(tile));
  }
}

namespace {

using LinearFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                            c10::List<std::optional<c10::Scalar>>, std::optional<c10::string_view>);
using ReorderFn = at::Tensor(const at::Tensor&, std::optional<int64_t>);

// The two operators, or nothing where this torch has no oneDNN.
struct OneDnnOps {
  std::optional<c10::TypedOperatorHandle<LinearFn>> linear;
  std::optional<c10::TypedOperatorHandle<ReorderFn>> reorder;
};

const OneDnnOps& onednn_ops() {
  static const OneDnnOps ops = [] {
    OneDnnOps found;
    auto& dispatcher = c10::Dispatcher::singleton();
    auto linear = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
    auto reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
    if (linear.has_value() && reorder.has_value() && at::hasMKLDNN() &&
        linear->hasKernelForDispatchKey(c10::DispatchKey::CPU) &&
        reorder->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
      found.linear = linear->typed<LinearFn>();
      found.reorder = reorder->typed<ReorderFn>();
    }
    return found;
  }();
  return ops;
}

}  // namespace

bool OneDnnLinear::usable(const at::Tensor& weight) {
  return weight.defined() && weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 2 &&
         weight.numel() > 0 && onednn_ops().linear.has_value();
}

OneDnnLinear::OneDnnLinear(const at::Tensor& weight, int64_t rows)
    : packed_(onednn_ops().reorder->call(weight.contiguous(), std::max<int64_t>(rows, 1))) {}

at::Tensor OneDnnLinear::operator()(const at::Tensor& input) const {
  return onednn_ops().linear->call(input, packed_, std::nullopt, "none", c10::List<std::optional<c10::Scalar>>(),
                                   std::nullopt);
}

}  // namespace fusednn
