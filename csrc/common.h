// Shared helpers for the torch-side C++ files (never included by .cu files): dtypes,
// output allocation and the argument checks of the registered ops (common.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/types.h"

namespace fusednn {

// The CPU kernels' C++ type of each Storage value (see dispatch_storage).
using CpuTypes = TypeMap<float, double, c10::Half, c10::BFloat16>;

// The Storage of a dtype; TypeError for dtypes without kernels.
Storage storage_of(at::ScalarType dtype);
at::ScalarType scalar_type_of(Storage storage);
// The dtype a kernel accumulates and saves its state in for inputs of `dtype`.
at::ScalarType accumulate_scalar_type(at::ScalarType dtype);

// Allocates an output tensor. When output poisoning is on (the test suite turns
// it on), floating-point outputs are filled with NaN so that any element a
// kernel forgets to write shows up in the comparison against the reference.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Whether outputs are poisoned (exposed as fusednn._C._set_poison_outputs).
bool poison_outputs_enabled();
void set_poison_outputs(bool enabled);

// The checks of one registered op's arguments, run before a kernel touches any data.
// Each raises "<op>: <name> must be <expected>; got <actual>": TypeError (Python) for a
// wrong dtype, ValueError for anything else.
class ArgumentChecks {
 public:
  explicit ArgumentChecks(const char* op) : op_(op) {}

  // A defined tensor of `dtype` on `device` with exactly `sizes`; `shape` names the
  // sizes symbolically for the message (e.g. "[T, B, 4H]"). `contiguous` where a
  // kernel reads it through a raw pointer.
  void tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device,
              at::IntArrayRef sizes, const char* shape, bool contiguous = false) const;
  void dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) const;
  void device(const at::Tensor& t, const char* name, const at::Device& device) const;
  // Any other check: raise "<op>: <what...>" unless `ok`, as ValueError or TypeError.
  template <typename... Args>
  void value(bool ok, const Args&... what) const {
    TORCH_CHECK_VALUE(ok, op_, ": ", what...);
  }
  template <typename... Args>
  void type(bool ok, const Args&... what) const {
    TORCH_CHECK_TYPE(ok, op_, ": ", what...);
  }

 private:
  const char* op_;
};

// "torch.float32" and so on, as Python prints dtypes.
std::string dtype_name(at::ScalarType dtype);

}  // namespace fusednn
