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
  // One layer, one direction, time-major x [T, B, I]; batch_sizes (non-increasing)
  // makes a packed variable-length batch. Returns y [T, B, P], h_n [B, P], c_n [B, H]
  // and, with save_workspace, what lstm_backward needs: gates [T, B, 4H] and
  // cells [T, B, H] (fp32 for half types) and, with w_hr, hidden [T, B, H];
  // otherwise those three are empty.
  m.def(
      "lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? w_hr, int[]? batch_sizes, bool save_workspace) -> "
      "(Tensor y, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells, Tensor hidden)");
  // grad_w_ih_hh = [grad_w_ih | grad_w_hh] ([4H, I + P], one GEMM); grad_bias is the
  // gradient of b_ih and of b_hh alike; grad_x is empty unless input_grad, grad_w_hr
  // unless w_hr is given.
  m.def(
      "lstm_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, Tensor x, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? w_hr, int[]? batch_sizes, Tensor y, Tensor gates, Tensor cells, "
      "Tensor hidden, bool input_grad) -> "
      "(Tensor grad_x, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih_hh, Tensor grad_bias, Tensor grad_w_hr)");
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
