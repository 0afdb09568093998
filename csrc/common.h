// Shared helpers for the torch-side C++ files (never included by .cu files): dtypes
// and output allocation (common.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/types.h"

namespace fusednn {

// The CPU kernels' C++ type of each Storage value (see dispatch_storage).
using CpuTypes = TypeMap<float, double, c10::Half, c10::BFloat16>;

// The Storage of a dtype; an error for dtypes without kernels.
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

}  // namespace fusednn
