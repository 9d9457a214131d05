// Bi-WKV forward kernel: the one CUDA implementation behind the PyTorch op and the TensorRT plugin.
//
// Layout (B, C, T), contiguous along T; w and u are (C,) float32; k, v and y share one dtype
// (float32 or float16); every sum is accumulated in float32. Either mode of contract.json: exact (the
// formula of shared/design/biwkv.md) or vrwkv (the chunked formula of Vision-RWKV's CUDA kernel).
#pragma once

#include "biwkv_mode.h"

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

enum class HpcmBiwkvDtype : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
};

// The modes of biwkv_mode.h (contract.json's "modes", in its order).
enum class HpcmBiwkvMode : int32_t
{
    kExact = HPCM_BIWKV_MODE_EXACT,
    kVrwkv = HPCM_BIWKV_MODE_VRWKV,
};

// Bytes of scratch memory hpcm_biwkv_forward needs for these dimensions and mode (0 when T fits one
// tile). Monotone in B, C and T, so the value for the largest shape covers every smaller one.
size_t hpcm_biwkv_workspace_bytes(int64_t B, int64_t C, int64_t T, HpcmBiwkvMode mode);

// Enqueues the forward pass on `stream`; allocates nothing and never synchronises, so it can be
// captured into a CUDA graph. `workspace` must hold hpcm_biwkv_workspace_bytes(B, C, T, mode) bytes,
// aligned to 4 bytes (it may be null when that is 0). Returns cudaErrorInvalidValue for bad
// arguments, otherwise the launch status.
cudaError_t hpcm_biwkv_forward(float const* w, float const* u, void const* k, void const* v, void* y, int64_t B,
    int64_t C, int64_t T, HpcmBiwkvDtype dtype, HpcmBiwkvMode mode, void* workspace, size_t workspace_bytes,
    cudaStream_t stream);
