// fusednn._C: the operator schemas of every C++/CUDA op (one TORCH_LIBRARY for
// the whole library; each backend adds its kernels with TORCH_LIBRARY_IMPL in
// <family>/<op>_cpu.cpp and <family>/<op>_cuda.cpp) and a small pybind11 module.

#include <torch/extension.h>

#include <atomic>
#include <limits>

#include "common.h"
#include "fusednn_build_config.h"

namespace fusednn {

namespace {
std::atomic<bool> g_poison_outputs{false};
}

bool poison_outputs_enabled() { return g_poison_outputs.load(std::memory_order_relaxed); }

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (poison_outputs_enabled() && at::isFloatingType(out.scalar_type())) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

}  // namespace fusednn

TORCH_LIBRARY(fusednn, m) {
  // --- recurrent: LSTM ------------------------------------------------------
  // (schemas added by the recurrent family)
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusednn C++/CUDA kernels (ops are registered as torch.ops.fusednn.*)";
  m.def(
      "build_info",
      []() {
        py::dict info;
        py::list backends;
        backends.append("cpu");
#ifdef FUSEDNN_WITH_CUDA
        backends.append("cuda");
        info["cuda"] = true;
#else
        info["cuda"] = false;
#endif
        info["backends"] = backends;
        info["cuda_archs"] = std::string(FUSEDNN_CUDA_ARCHS);
        info["nvcc"] = std::string(FUSEDNN_NVCC_VERSION);
#if defined(__clang__)
        info["cxx_compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        info["cxx_compiler"] = std::string("gcc ") + __VERSION__;
#else
        info["cxx_compiler"] = std::string("unknown");
#endif
        info["torch"] = std::string(FUSEDNN_BUILT_WITH_TORCH);
#ifdef _OPENMP
        info["openmp"] = true;
#else
        info["openmp"] = false;
#endif
        return info;
      },
      "What this build of fusednn._C contains: backends, CUDA archs, compiler and torch versions.");
  m.def(
      "_set_poison_outputs", [](bool enabled) { fusednn::g_poison_outputs.store(enabled); },
      "Fill floating-point outputs of the C++ ops with NaN before the kernels write them (testing).");
  m.def("_poison_outputs_enabled", &fusednn::poison_outputs_enabled);
}
