// fusednn._C: the fusednn operator library and a small pybind11 module.
//
// Each op family adds its schemas to the library with TORCH_LIBRARY_FRAGMENT
// (<family>/<op>_schema.cpp) and its kernels per backend with TORCH_LIBRARY_IMPL
// (<family>/<op>_cpu.cpp, <family>/<op>_cuda.cpp); the Triton ops of the Python
// package join the same namespace through torch.library.

#include <torch/extension.h>

#include "common.h"
#include "fusednn_build_config.h"

// The library itself: no schemas of its own, but it owns the namespace, so that a
// second TORCH_LIBRARY(fusednn) anywhere fails loudly.
TORCH_LIBRARY(fusednn, m) {}

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
      "_set_poison_outputs", &fusednn::set_poison_outputs,
      "Fill floating-point outputs of the C++ ops with NaN before the kernels write them (testing).");
  m.def("_poison_outputs_enabled", &fusednn::poison_outputs_enabled);
}
