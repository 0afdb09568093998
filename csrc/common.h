// Shared helpers for the torch-side C++ files (never included by .cu files).
#pragma once

#include <ATen/ATen.h>

namespace fusednn {

// Allocates an output tensor. When output poisoning is on (the test suite turns
// it on), floating-point outputs are filled with NaN so that any element a
// kernel forgets to write shows up in the comparison against the reference.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Whether outputs are poisoned right now (exposed as fusednn._C._set_poison_outputs).
bool poison_outputs_enabled();

}  // namespace fusednn
