// Torch-side helpers shared by every op (see common.h).

#include "common.h"

#include <atomic>
#include <limits>

namespace fusednn {

namespace {
std::atomic<bool> g_poison_outputs{false};
}  // namespace

bool poison_outputs_enabled() { return g_poison_outputs.load(std::memory_order_relaxed); }

void set_poison_outputs(bool enabled) { g_poison_outputs.store(enabled); }

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (poison_outputs_enabled() && at::isFloatingType(out.scalar_type())) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

Storage storage_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return Storage::kFloat32;
    case at::kDouble: return Storage::kFloat64;
    case at::kHalf: return Storage::kFloat16;
    case at::kBFloat16: return Storage::kBFloat16;
    default:
      TORCH_CHECK(false, "fusednn: unsupported dtype ", dtype, " (float32, float64, float16, bfloat16 are)");
  }
}

at::ScalarType scalar_type_of(Storage storage) {
  switch (storage) {
    case Storage::kFloat32: return at::kFloat;
    case Storage::kFloat64: return at::kDouble;
    case Storage::kFloat16: return at::kHalf;
    case Storage::kBFloat16: return at::kBFloat16;
  }
  TORCH_CHECK(false, "fusednn: invalid Storage value ", static_cast<int>(storage));
}

at::ScalarType accumulate_scalar_type(at::ScalarType dtype) {
  return scalar_type_of(accumulate_storage(storage_of(dtype)));
}

}  // namespace fusednn
