// The Bi-WKV formulas the op computes: contract.json's "modes", numbered in the order it lists them
// (its "mode" attribute names one; a node without it, as every node of contract version 1, is exact).
#pragma once

#include <stdint.h>

// exact: the formula of shared/design/biwkv.md. vrwkv: the formula of Vision-RWKV's CUDA kernel, which
// cuts each row into HPCM_BIWKV_VRWKV_CHUNKS chunks of ceil(T / HPCM_BIWKV_VRWKV_CHUNKS) tokens and
// restarts its scans at every chunk start (reference.py writes its weights out).
#define HPCM_BIWKV_MODE_EXACT 0
#define HPCM_BIWKV_MODE_VRWKV 1
#define HPCM_BIWKV_MODE_COUNT 2
#define HPCM_BIWKV_VRWKV_CHUNKS 32
