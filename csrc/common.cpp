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
      TORCH_CHECK_TYPE(false, "fusednn: unsupported dtype ", dtype_name(dtype),
                       " (torch.float32, torch.float64, torch.float16 and torch.bfloat16 are)");
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

std::string dtype_name(at::ScalarType dtype) { return "torch." + std::string(c10::getDtypeNames(dtype).first); }

void ArgumentChecks::dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) const {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op_, ": ", name, " must be ", dtype_name(dtype), "; got ",
                   dtype_name(t.scalar_type()));
}

void ArgumentChecks::device(const at::Tensor& t, const char* name, const at::Device& device) const {
  TORCH_CHECK_VALUE(t.device() == device, op_, ": ", name, " must be on ", device, "; got ", t.device());
}

void ArgumentChecks::tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device,
                            at::IntArrayRef sizes, const char* shape, bool contiguous) const {
  TORCH_CHECK_VALUE(t.defined(), op_, ": ", name, " must be a tensor; got an undefined one");
  this->device(t, name, device);
  this->dtype(t, name, dtype);
  TORCH_CHECK_VALUE(t.sizes() == sizes, op_, ": ", name, " must be ", shape, " = ", sizes, "; got ", t.sizes());
  TORCH_CHECK_VALUE(!contiguous || t.is_contiguous(), op_, ": ", name, " must be contiguous; got strides ",
                    t.strides());
}

}  // namespace fusednn
