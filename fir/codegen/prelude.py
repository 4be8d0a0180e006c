"""The device-side prelude every generated translation unit starts with: headers, conversions between storage
and compute types, fir's scalar semantics (NaN-propagating max/min, wrapping integer arithmetic, gelu, sigmoid),
warp and block reductions, and the status word kernels set on bad input (fir.runtime reads it after a step)."""

from __future__ import annotations

# Status codes a kernel writes into fir_status (the first one wins).
STATUS_OK = 0
STATUS_INDEX_OUT_OF_RANGE = 1
STATUS_LABEL_OUT_OF_RANGE = 2
STATUS_EMPTY_MEAN = 3

PRELUDE = r"""#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>

// Nonzero once a kernel met input it cannot compute on: 1 = gather index out of range, 2 = label out of range,
// 3 = a mean over no elements.
__device__ int fir_status;
__device__ __forceinline__ void fir_fail(int code) { atomicCAS(&fir_status, 0, code); }

// Loads widen f16/bf16 to float; everything else computes in its own type.
__device__ __forceinline__ float fir_ld(__half x) { return __half2float(x); }
__device__ __forceinline__ float fir_ld(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float fir_ld(float x) { return x; }
__device__ __forceinline__ int fir_ld(int x) { return x; }
__device__ __forceinline__ long long fir_ld(long long x) { return x; }
__device__ __forceinline__ bool fir_ld(bool x) { return x; }

// Stores convert the compute value to the storage type (round to nearest even).
template <typename T> __device__ __forceinline__ T fir_st(float x);
template <> __device__ __forceinline__ float fir_st<float>(float x) { return x; }
template <> __device__ __forceinline__ __half fir_st<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 fir_st<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// A low-precision op result is rounded once to its dtype, as the reference does, even inside a fused kernel.
__device__ __forceinline__ float fir_round_f16(float x) { return __half2float(__float2half_rn(x)); }
__device__ __forceinline__ float fir_round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// numpy.maximum / minimum: NaN propagates.
__device__ __forceinline__ float fir_max(float a, float b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ float fir_min(float a, float b) { return (a != a || a < b) ? a : b; }
__device__ __forceinline__ int fir_max(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ int fir_min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ long long fir_max(long long a, long long b) { return a > b ? a : b; }
__device__ __forceinline__ long long fir_min(long long a, long long b) { return a < b ? a : b; }

// Integer arithmetic wraps like numpy (signed overflow is undefined in C, unsigned is not).
__device__ __forceinline__ int fir_add(int a, int b) { return (int)((unsigned)a + (unsigned)b); }
__device__ __forceinline__ int fir_sub(int a, int b) { return (int)((unsigned)a - (unsigned)b); }
__device__ __forceinline__ int fir_mul(int a, int b) { return (int)((unsigned)a * (unsigned)b); }
__device__ __forceinline__ int fir_neg(int a) { return (int)(0u - (unsigned)a); }
__device__ __forceinline__ long long fir_add(long long a, long long b) {
  return (long long)((unsigned long long)a + (unsigned long long)b); }
__device__ __forceinline__ long long fir_sub(long long a, long long b) {
  return (long long)((unsigned long long)a - (unsigned long long)b); }
__device__ __forceinline__ long long fir_mul(long long a, long long b) {
  return (long long)((unsigned long long)a * (unsigned long long)b); }
__device__ __forceinline__ long long fir_neg(long long a) { return (long long)(0ull - (unsigned long long)a); }
__device__ __forceinline__ float fir_add(float a, float b) { return a + b; }
__device__ __forceinline__ float fir_sub(float a, float b) { return a - b; }
__device__ __forceinline__ float fir_mul(float a, float b) { return a * b; }
__device__ __forceinline__ float fir_neg(float a) { return -a; }

__device__ __forceinline__ float fir_relu(float x) { return x > 0.0f ? x : (x != x ? x : 0.0f); }
__device__ __forceinline__ int fir_relu(int x) { return x > 0 ? x : 0; }
__device__ __forceinline__ long long fir_relu(long long x) { return x > 0 ? x : 0; }
// Through e^-|x|, which never overflows.
__device__ __forceinline__ float fir_sigmoid(float x) {
  float e = expf(-fabsf(x)); return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e); }
__device__ __forceinline__ float fir_gelu_tanh(float x) {
  return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))); }
__device__ __forceinline__ float fir_gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f)); }

// Warp and block reductions (blockDim.x a multiple of 32, at most 1024; `scratch` holds 32 values).
__device__ __forceinline__ float fir_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v; }
__device__ __forceinline__ float fir_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fir_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v; }
__device__ __forceinline__ long long fir_warp_sum(long long v) {
  for (int o = 16; o > 0; o >>= 1) v = fir_add(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v; }
__device__ __forceinline__ long long fir_warp_max(long long v) {
  for (int o = 16; o > 0; o >>= 1) v = fir_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v; }
template <typename T> __device__ __forceinline__ T fir_block_sum(T v, T* scratch) {
  v = fir_warp_sum(v);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : (T)0;
  return fir_warp_sum(v); }
template <typename T> __device__ __forceinline__ T fir_block_max(T v, T lowest, T* scratch) {
  v = fir_warp_max(v);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : lowest;
  return fir_warp_max(v); }
"""
