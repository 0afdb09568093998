// Element types and activations of the CUDA kernels: the CUDA side of common/types.h
// and the counterpart of common/cpu_math.h. CUDA headers only (no torch), for .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/types.h"

namespace fusednn {

// The CUDA kernels' C++ type of each Storage value (see dispatch_storage).
using CudaTypes = TypeMap<float, double, __half, __nv_bfloat16>;

// Storage <-> accumulate conversions (round to nearest on the way down).
__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ double load(const double* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Accurate to a few ulp (expf is __expf under --use_fast_math; tanhf is not approximated).
__device__ __forceinline__ float sigmoid_of(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ double sigmoid_of(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ float tanh_of(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_of(double x) { return tanh(x); }

}  // namespace fusednn
