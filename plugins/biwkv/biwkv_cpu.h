// Bi-WKV on the CPU: either mode of contract.json (biwkv_mode.h) as one forward and one backward scan
// per (b, c) row, double accumulation. Serves ONNX Runtime's CPU execution provider (biwkv_ort_op.cpp);
// the GPU has biwkv_kernel.cu.
#pragma once

#include "biwkv_mode.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// y[b, c, t] in `mode` (HPCM_BIWKV_MODE_*) from w, u (C,) float32 and k, v (B, C, T) in layout BCT,
// contiguous. Rows are split across up to `threads` threads (0: all hardware threads). Returns 0, or -1
// for invalid sizes or an unknown mode.
int hpcm_biwkv_cpu_f32(float const* w, float const* u, float const* k, float const* v, float* y, int64_t B,
    int64_t C, int64_t T, int32_t mode, int threads);

// The same with k, v and y as IEEE float16 bit patterns; y is rounded to nearest even once.
int hpcm_biwkv_cpu_f16(float const* w, float const* u, uint16_t const* k, uint16_t const* v, uint16_t* y,
    int64_t B, int64_t C, int64_t T, int32_t mode, int threads);

#ifdef __cplusplus
}
#endif
