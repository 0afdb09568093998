// The CUDA pointwise steps of the recurrent cells (cell.cu), launched on the current
// stream and registered as the CUDA steps of the shared time loop (sequence.cpp; its
// GEMMs go through ATen to cuBLAS). Built only against a CUDA torch.

#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "recurrent/cell.h"
#include "recurrent/sequence.h"

namespace fusednn {
namespace recurrent {
namespace {

void check_launch(int status, const char* step) {
  TORCH_CHECK(status == static_cast<int>(cudaSuccess), "fusednn recurrent: the ", step, " kernel failed to launch: ",
              cudaGetErrorString(static_cast<cudaError_t>(status)));
}

void cuda_forward_step(const ForwardStepParams& p) {
  check_launch(launch_forward_step(p, c10::cuda::getCurrentCUDAStream().stream()), "forward step");
}

void cuda_backward_step(const BackwardStepParams& p) {
  check_launch(launch_backward_step(p, c10::cuda::getCurrentCUDAStream().stream()), "backward step");
}

// No fused GEMM + pointwise steps: the time loop runs cuBLAS, then the step kernel.
constexpr PointwiseSteps kCudaSteps{at::kCUDA, cuda_forward_step, cuda_backward_step, nullptr, nullptr};
[[maybe_unused]] const bool kRegistered = register_steps(kCudaSteps);

}  // namespace
}  // namespace recurrent
}  // namespace fusednn
