// Bi-WKV forward as a tiled two-direction scan; see README.md ("Parallelisation") for the design.
//
// A row is one (b, c) pair: T contiguous tokens. Rows are cut into tiles of up to kMaxTile tokens;
// one thread block owns one tile and each of its threads owns kItems consecutive tokens.
//   pass 1 (tile_summary_kernel): the forward and backward scan state of every whole tile.
//   pass 2 (tile_prefix_kernel):  per row, turns the tile states into the state entering each tile
//                                 from the left (forward) and from the right (backward), in place.
//   pass 3 (output_kernel):       rescans every tile from its entering states and writes y.
// A row that fits one tile needs neither workspace nor passes 1 and 2.
//
// Both modes run these passes; they differ in the forward direction's state (ExactForward,
// VrwkvForward) and in how a token's output is mixed. The vrwkv mode's chunks restart its scans at
// chunk starts, which the tiles do not line up with: its forward state is a segmented scan (README.md,
// "The vrwkv mode"), combined across threads, warps and tiles like the exact one.

#include "biwkv_kernel.h"

#include <cuda_fp16.h>
#include <math_constants.h>

#include <climits>

namespace
{

// Eight tokens per thread: the sequential part costs one expf per token and direction, and the
// shuffle scans (two expf per step) only see one summary per eight tokens.
constexpr int kItems = 8;
constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 256;
constexpr int kMaxWarps = kMaxThreads / kWarpSize;
constexpr int kMaxTile = kItems * kMaxThreads;
// One padding float per 32 makes both the striped global<->shared copies and the blocked
// per-thread accesses (stride kItems) hit 32 distinct banks.
constexpr int kSharedTile = kMaxTile + kMaxTile / kWarpSize;
// Per row and tile: the forward state (Forward::kFloats floats) then the backward (m, num, den).
constexpr int kBackwardFloats = 3;
constexpr int kPrefixThreads = 128;
constexpr unsigned kFullMask = 0xffffffffu;

// exp(m) * (num, den) is the weighted sum of (v, 1) over a run of `len` tokens. m is the largest
// exponent seen, so num and den never overflow and den >= 1 once the run holds a token.
struct Scan
{
    float m;
    float num;
    float den;
    int len;
};

__device__ __forceinline__ Scan emptyScan()
{
    return Scan{-CUDART_INF_F, 0.0f, 0.0f, 0};
}

// The run `far` seen across the adjacent run `near`: exp(-near.len * w) * far + near. In the
// forward direction `far` lies before `near`, in the backward direction after it. The guard keeps
// two empty runs from producing exp(-inf - -inf).
__device__ __forceinline__ Scan combine(Scan far, Scan near, float w)
{
    float const farM = far.m - static_cast<float>(near.len) * w;
    float const m = fmaxf(farM, near.m);
    if (m == -CUDART_INF_F)
    {
        return Scan{m, 0.0f, 0.0f, far.len + near.len};
    }
    float const a = expf(farM - m);
    float const b = expf(near.m - m);
    return Scan{m, a * far.num + b * near.num, a * far.den + b * near.den, far.len + near.len};
}

// Appends one token on the near side. One of the two rescaling factors is exp(0) = 1, so a single
// expf of the negative distance suffices.
__device__ __forceinline__ Scan push(Scan s, float k, float v, float w)
{
    float const decayed = s.m - w;
    float const e = expf(-fabsf(decayed - k));
    bool const keep = decayed >= k;
    float const a = keep ? 1.0f : e;
    float const b = keep ? e : 1.0f;
    return Scan{keep ? decayed : k, a * s.num + b * v, a * s.den + b, s.len + 1};
}

// The run seen from one more token away.
__device__ __forceinline__ Scan shifted(Scan s, float w)
{
    return Scan{s.m - w, s.num, s.den, s.len};
}

// y_t from the runs before t, after t and the bonus term exp(u + k_t) v_t, rescaled to the largest
// of the three exponents.
__device__ __forceinline__ float mix(Scan past, Scan future, float diagonal, float v)
{
    float const top = fmaxf(fmaxf(past.m, future.m), diagonal);
    float const a = expf(past.m - top);
    float const b = expf(future.m - top);
    float const c = expf(diagonal - top);
    return (a * past.num + b * future.num + c * v) / (a * past.den + b * future.den + c);
}

// The vrwkv mode's y_t: mix's three parts plus the chunk restart's leftover times its signed
// coefficient 1 - exp(w).
__device__ __forceinline__ float mixChunked(
    Scan past, Scan future, float diagonal, float v, Scan restart, float restartCoefficient)
{
    float const top = fmaxf(fmaxf(past.m, future.m), fmaxf(diagonal, restart.m));
    float const a = expf(past.m - top);
    float const b = expf(future.m - top);
    float const c = expf(diagonal - top);
    float const r = restartCoefficient * expf(restart.m - top);
    return (a * past.num + b * future.num + c * v + r * restart.num)
        / (a * past.den + b * future.den + c + r * restart.den);
}

__device__ __forceinline__ Scan shuffleUp(Scan s, int delta)
{
    return Scan{__shfl_up_sync(kFullMask, s.m, delta), __shfl_up_sync(kFullMask, s.num, delta),
        __shfl_up_sync(kFullMask, s.den, delta), __shfl_up_sync(kFullMask, s.len, delta)};
}

__device__ __forceinline__ Scan shuffleDown(Scan s, int delta)
{
    return Scan{__shfl_down_sync(kFullMask, s.m, delta), __shfl_down_sync(kFullMask, s.num, delta),
        __shfl_down_sync(kFullMask, s.den, delta), __shfl_down_sync(kFullMask, s.len, delta)};
}

__device__ __forceinline__ Scan shuffleFrom(Scan s, int lane)
{
    return Scan{__shfl_sync(kFullMask, s.m, lane), __shfl_sync(kFullMask, s.num, lane),
        __shfl_sync(kFullMask, s.den, lane), __shfl_sync(kFullMask, s.len, lane)};
}

// The forward direction's state of a run in the exact mode: the run's scan.
struct ExactForward
{
    static constexpr int kFloats = 3;
    Scan exact;
};

// The forward direction's state of a run in the vrwkv mode. For t in the chunk starting at s, the
// kernel's past sum is exp(-w) * (the exact state at s) seen from t plus the tokens s..t-1 as the exact
// scan weighs them; its restart leftover weighs the tokens s+1..t by exp((t-n) w) (a scan with decay
// -w) and enters y_t times 1 - exp(w). So a run keeps
//   exact:   all its tokens, exact weights (what a later chunk start needs);
//   chunked: the past sum as seen after its last token, counting only its own tokens: where the run
//            holds a chunk start, the part before it starts from exp(-w) * its exact state there;
//   restart: the leftover of its tokens after its last chunk start;
//   start:   whether it holds a chunk start (then the far side's chunked and restart sums are void).
// Combining runs keeps these meanings (far.exact replaces far.chunked when near holds a start), and is
// associative like the exact combine.
struct VrwkvForward
{
    static constexpr int kFloats = 10;
    Scan exact;
    Scan chunked;
    Scan restart;
    int start;
};

__device__ __forceinline__ ExactForward combine(ExactForward far, ExactForward near, float w)
{
    return ExactForward{combine(far.exact, near.exact, w)};
}

__device__ __forceinline__ VrwkvForward combine(VrwkvForward far, VrwkvForward near, float w)
{
    VrwkvForward s;
    s.exact = combine(far.exact, near.exact, w);
    s.chunked = combine(near.start ? shifted(far.exact, w) : far.chunked, near.chunked, w);
    s.restart = near.start ? near.restart : combine(far.restart, near.restart, -w);
    s.start = far.start | near.start;
    return s;
}

template <typename Forward>
__device__ __forceinline__ Forward emptyForward();

template <>
__device__ __forceinline__ ExactForward emptyForward<ExactForward>()
{
    return ExactForward{emptyScan()};
}

template <>
__device__ __forceinline__ VrwkvForward emptyForward<VrwkvForward>()
{
    return VrwkvForward{emptyScan(), emptyScan(), emptyScan(), 0};
}

// Appends one token (`start`: it begins a vrwkv chunk; the exact mode has no chunks).
__device__ __forceinline__ ExactForward push(ExactForward s, float k, float v, float w, bool /*start*/)
{
    return ExactForward{push(s.exact, k, v, w)};
}

__device__ __forceinline__ VrwkvForward push(VrwkvForward s, float k, float v, float w, bool start)
{
    Scan const past = start ? shifted(s.exact, w) : s.chunked;
    Scan const restart = start ? emptyScan() : push(s.restart, k, v, -w);
    return VrwkvForward{push(s.exact, k, v, w), push(past, k, v, w), restart, s.start | static_cast<int>(start)};
}

__device__ __forceinline__ void storeState(float* out, Scan s)
{
    out[0] = s.m;
    out[1] = s.num;
    out[2] = s.den;
}

__device__ __forceinline__ Scan loadState(float const* in, int len)
{
    return Scan{in[0], in[1], in[2], len};
}

__device__ __forceinline__ void storeState(float* out, ExactForward s)
{
    storeState(out, s.exact);
}

__device__ __forceinline__ void storeState(float* out, VrwkvForward s)
{
    storeState(out, s.exact);
    storeState(out + 3, s.chunked);
    storeState(out + 6, s.restart);
    out[9] = static_cast<float>(s.start);
}

template <typename Forward>
__device__ __forceinline__ Forward loadForward(float const* in, int len);

template <>
__device__ __forceinline__ ExactForward loadForward<ExactForward>(float const* in, int len)
{
    return ExactForward{loadState(in, len)};
}

template <>
__device__ __forceinline__ VrwkvForward loadForward<VrwkvForward>(float const* in, int len)
{
    return VrwkvForward{loadState(in, len), loadState(in + 3, len), loadState(in + 6, len), in[9] != 0.0f};
}

__device__ __forceinline__ ExactForward shuffleUp(ExactForward s, int delta)
{
    return ExactForward{shuffleUp(s.exact, delta)};
}

__device__ __forceinline__ VrwkvForward shuffleUp(VrwkvForward s, int delta)
{
    return VrwkvForward{shuffleUp(s.exact, delta), shuffleUp(s.chunked, delta), shuffleUp(s.restart, delta),
        __shfl_up_sync(kFullMask, s.start, delta)};
}

__device__ __forceinline__ ExactForward shuffleFrom(ExactForward s, int lane)
{
    return ExactForward{shuffleFrom(s.exact, lane)};
}

__device__ __forceinline__ VrwkvForward shuffleFrom(VrwkvForward s, int lane)
{
    return VrwkvForward{shuffleFrom(s.exact, lane), shuffleFrom(s.chunked, lane), shuffleFrom(s.restart, lane),
        __shfl_sync(kFullMask, s.start, lane)};
}

// Inclusive scan over lanes; earlier lanes are the far side.
template <typename Forward>
__device__ __forceinline__ Forward warpScanForward(Forward s, float w, int lane)
{
#pragma unroll
    for (int delta = 1; delta < kWarpSize; delta *= 2)
    {
        Forward const earlier = shuffleUp(s, delta);
        if (lane >= delta)
        {
            s = combine(earlier, s, w);
        }
    }
    return s;
}

// Inclusive suffix scan over lanes; later lanes are the far side.
__device__ __forceinline__ Scan warpScanBackward(Scan s, float w, int lane)
{
#pragma unroll
    for (int delta = 1; delta < kWarpSize; delta *= 2)
    {
        Scan const later = shuffleDown(s, delta);
        if (lane + delta < kWarpSize)
        {
            s = combine(later, s, w);
        }
    }
    return s;
}

template <typename Forward>
struct TileShared
{
    float k[kSharedTile];
    float v[kSharedTile];
    Forward forward[kMaxWarps];
    Scan backward[kMaxWarps];
};

__device__ __forceinline__ int padded(int e)
{
    return e + e / kWarpSize;
}

__device__ __forceinline__ float toFloat(float x)
{
    return x;
}

__device__ __forceinline__ float toFloat(__half x)
{
    return __half2float(x);
}

__device__ __forceinline__ void storeAs(float* p, float x)
{
    *p = x;
}

__device__ __forceinline__ void storeAs(__half* p, float x)
{
    *p = __float2half_rn(x);
}

// Everything one thread needs from its tile: its tokens in registers, how many of them exist, which
// of them start a vrwkv chunk (bit j for token j), and its forward / backward summaries.
template <typename Forward>
struct ThreadRun
{
    float k[kItems];
    float v[kItems];
    int count;
    unsigned starts;
    Forward forward;
    Scan backward;
};

// Bit j set where the thread's token j begins a vrwkv chunk of `chunkTokens` tokens (0 in the exact mode).
__device__ __forceinline__ unsigned chunkStarts(int64_t firstToken, int64_t chunkTokens)
{
    unsigned bits = 0;
    if (chunkTokens > 0)
    {
#pragma unroll
        for (int j = 0; j < kItems; ++j)
        {
            bits |= static_cast<unsigned>((firstToken + j) % chunkTokens == 0) << j;
        }
    }
    return bits;
}

// Global loads are striped (lane i reads token base + i, one 128-byte line per warp for float32);
// the shared-memory transpose hands each thread kItems consecutive tokens for its sequential scan.
template <typename Forward, typename Elem>
__device__ __forceinline__ ThreadRun<Forward> loadRun(Elem const* kRow, Elem const* vRow, int64_t tileBegin,
    int64_t tokens, int64_t chunkTokens, float w, TileShared<Forward>& sh)
{
#pragma unroll
    for (int j = 0; j < kItems; ++j)
    {
        int const e = j * static_cast<int>(blockDim.x) + static_cast<int>(threadIdx.x);
        int64_t const t = tileBegin + e;
        float kv = 0.0f;
        float vv = 0.0f;
        if (t < tokens)
        {
            kv = toFloat(kRow[t]);
            vv = toFloat(vRow[t]);
        }
        sh.k[padded(e)] = kv;
        sh.v[padded(e)] = vv;
    }
    __syncthreads();

    ThreadRun<Forward> run;
    int const first = static_cast<int>(threadIdx.x) * kItems;
    int64_t const remaining = tokens - tileBegin - first;
    run.count = remaining <= 0 ? 0 : (remaining >= kItems ? kItems : static_cast<int>(remaining));
    run.starts = chunkStarts(tileBegin + first, chunkTokens);
#pragma unroll
    for (int j = 0; j < kItems; ++j)
    {
        run.k[j] = sh.k[padded(first + j)];
        run.v[j] = sh.v[padded(first + j)];
    }
    run.forward = emptyForward<Forward>();
    run.backward = emptyScan();
#pragma unroll
    for (int j = 0; j < kItems; ++j)
    {
        if (j < run.count)
        {
            run.forward = push(run.forward, run.k[j], run.v[j], w, (run.starts >> j) & 1u);
        }
    }
#pragma unroll
    for (int j = kItems - 1; j >= 0; --j)
    {
        if (j < run.count)
        {
            run.backward = push(run.backward, run.k[j], run.v[j], w);
        }
    }
    return run;
}

template <typename Forward>
struct BlockScan
{
    Forward before; // tokens of the tile before this thread's run, seen from its first token
    Scan after;     // tokens of the tile after this thread's run, seen from its last token
    Forward forwardTotal;
    Scan backwardTotal;
};

// Block-wide exclusive scans in both directions. Only trailing threads of the last tile have fewer
// than kItems tokens, so the runs of all threads stay contiguous. Contains the barrier that orders
// every thread's reads of sh.k / sh.v before later writes to them.
template <typename Forward>
__device__ __forceinline__ BlockScan<Forward> blockScan(
    ThreadRun<Forward> const& run, float w, TileShared<Forward>& sh)
{
    int const lane = static_cast<int>(threadIdx.x) % kWarpSize;
    int const warp = static_cast<int>(threadIdx.x) / kWarpSize;
    int const warps = static_cast<int>(blockDim.x) / kWarpSize;

    Forward const forward = warpScanForward(run.forward, w, lane);
    Scan const backward = warpScanBackward(run.backward, w, lane);
    if (lane == kWarpSize - 1)
    {
        sh.forward[warp] = forward;
    }
    if (lane == 0)
    {
        sh.backward[warp] = backward;
    }
    Forward laneBefore = shuffleUp(forward, 1);
    Scan laneAfter = shuffleDown(backward, 1);
    if (lane == 0)
    {
        laneBefore = emptyForward<Forward>();
    }
    if (lane == kWarpSize - 1)
    {
        laneAfter = emptyScan();
    }
    __syncthreads();

    // Every warp scans the (at most kMaxWarps) warp totals itself instead of waiting on a second
    // barrier for one warp to do it.
    Forward warpForward = lane < warps ? sh.forward[lane] : emptyForward<Forward>();
    Scan warpBackward = lane < warps ? sh.backward[lane] : emptyScan();
    warpForward = warpScanForward(warpForward, w, lane);
    warpBackward = warpScanBackward(warpBackward, w, lane);
    Forward const warpsBefore = shuffleFrom(warpForward, warp > 0 ? warp - 1 : 0);
    Scan const warpsAfter = shuffleFrom(warpBackward, warp + 1 < warps ? warp + 1 : 0);

    BlockScan<Forward> result;
    result.forwardTotal = shuffleFrom(warpForward, warps - 1);
    result.backwardTotal = shuffleFrom(warpBackward, 0);
    result.before = combine(warp > 0 ? warpsBefore : emptyForward<Forward>(), laneBefore, w);
    result.after = combine(warp + 1 < warps ? warpsAfter : emptyScan(), laneAfter, w);
    return result;
}

template <typename Forward, typename Elem>
__global__ void __launch_bounds__(kMaxThreads) tileSummaryKernel(float const* __restrict__ w,
    Elem const* __restrict__ k, Elem const* __restrict__ v, int64_t channels, int64_t tokens, int64_t chunkTokens,
    int64_t tiles, float* __restrict__ summaries)
{
    __shared__ TileShared<Forward> sh;
    int64_t const row = blockIdx.x / tiles;
    int64_t const tile = blockIdx.x % tiles;
    float const wc = w[row % channels];
    int64_t const tileBegin = tile * blockDim.x * kItems;

    ThreadRun<Forward> const run = loadRun(k + row * tokens, v + row * tokens, tileBegin, tokens, chunkTokens, wc, sh);
    BlockScan<Forward> const scan = blockScan(run, wc, sh);
    if (threadIdx.x == 0)
    {
        float* out = summaries + (row * tiles + tile) * (Forward::kFloats + kBackwardFloats);
        storeState(out, scan.forwardTotal);
        storeState(out + Forward::kFloats, scan.backwardTotal);
    }
}

// One thread per row and direction walks the row's tiles sequentially: a 4K image at stride 3
// has 17 tiles per row, far too few to pay for a parallel scan.
template <typename Forward>
__global__ void __launch_bounds__(kPrefixThreads) tilePrefixKernel(float const* __restrict__ w, int64_t rows,
    int64_t channels, int64_t tokens, int64_t tiles, int tileTokens, float* __restrict__ summaries)
{
    int64_t const index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index >= 2 * rows)
    {
        return;
    }
    int64_t const row = index / 2;
    bool const backward = (index % 2) == 1;
    float const wc = w[row % channels];
    int64_t const stride = Forward::kFloats + kBackwardFloats;
    float* const base = summaries + row * tiles * stride;

    Forward forwardCarry = emptyForward<Forward>();
    Scan backwardCarry = emptyScan();
    for (int64_t n = 0; n < tiles; ++n)
    {
        int64_t const tile = backward ? tiles - 1 - n : n;
        int64_t const left = tokens - tile * tileTokens;
        int const len = static_cast<int>(left < tileTokens ? left : tileTokens);
        float* const s = base + tile * stride;
        if (backward)
        {
            Scan const own = loadState(s + Forward::kFloats, len);
            storeState(s + Forward::kFloats, backwardCarry);
            backwardCarry = combine(backwardCarry, own, wc);
        }
        else
        {
            Forward const own = loadForward<Forward>(s, len);
            storeState(s, forwardCarry);
            forwardCarry = combine(forwardCarry, own, wc);
        }
    }
}

// Writes y for the thread's tokens from the states entering its run: `forward` (the tokens before it),
// `backward` (the tokens after it).
__device__ __forceinline__ void mixRun(ThreadRun<ExactForward> const& run, ExactForward forward, Scan backward,
    float wc, float uc, float (&out)[kItems])
{
    Scan past[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j)
    {
        past[j] = forward.exact;
        if (j < run.count)
        {
            forward.exact = push(forward.exact, run.k[j], run.v[j], wc);
        }
    }
#pragma unroll
    for (int j = kItems - 1; j >= 0; --j)
    {
        out[j] = 0.0f;
        if (j < run.count)
        {
            out[j] = mix(past[j], backward, uc + run.k[j], run.v[j]);
            backward = push(backward, run.k[j], run.v[j], wc);
        }
    }
}

__device__ __forceinline__ void mixRun(ThreadRun<VrwkvForward> const& run, VrwkvForward forward, Scan backward,
    float wc, float uc, float (&out)[kItems])
{
    float const restartCoefficient = -expm1f(wc);
    Scan past[kItems];
    Scan restart[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j)
    {
        bool const start = (run.starts >> j) & 1u;
        past[j] = start ? shifted(forward.exact, wc) : forward.chunked;
        if (j < run.count)
        {
            forward = push(forward, run.k[j], run.v[j], wc, start);
        }
        restart[j] = forward.restart;
    }
#pragma unroll
    for (int j = kItems - 1; j >= 0; --j)
    {
        out[j] = 0.0f;
        if (j < run.count)
        {
            out[j] = mixChunked(
                past[j], shifted(backward, wc), uc + run.k[j], run.v[j], restart[j], restartCoefficient);
            backward = push(backward, run.k[j], run.v[j], wc);
        }
    }
}

template <typename Forward, typename Elem>
__global__ void __launch_bounds__(kMaxThreads) outputKernel(float const* __restrict__ w, float const* __restrict__ u,
    Elem const* __restrict__ k, Elem const* __restrict__ v, Elem* __restrict__ y, int64_t channels, int64_t tokens,
    int64_t chunkTokens, int64_t tiles, float const* __restrict__ prefixes)
{
    __shared__ TileShared<Forward> sh;
    int64_t const row = blockIdx.x / tiles;
    int64_t const tile = blockIdx.x % tiles;
    float const wc = w[row % channels];
    float const uc = u[row % channels];
    int64_t const tileBegin = tile * blockDim.x * kItems;

    ThreadRun<Forward> const run = loadRun(k + row * tokens, v + row * tokens, tileBegin, tokens, chunkTokens, wc, sh);
    BlockScan<Forward> const scan = blockScan(run, wc, sh);
    Forward forward = scan.before;
    Scan backward = scan.after;
    if (tiles > 1)
    {
        float const* p = prefixes + (row * tiles + tile) * (Forward::kFloats + kBackwardFloats);
        forward = combine(loadForward<Forward>(p, 0), forward, wc);
        backward = combine(loadState(p + Forward::kFloats, 0), backward, wc);
    }

    float out[kItems];
    mixRun(run, forward, backward, wc, uc, out);

    // Reusing sh.k is safe: blockScan's barrier came after every thread's reads of it.
    int const first = static_cast<int>(threadIdx.x) * kItems;
#pragma unroll
    for (int j = 0; j < kItems; ++j)
    {
        sh.k[padded(first + j)] = out[j];
    }
    __syncthreads();
    Elem* const yRow = y + row * tokens;
#pragma unroll
    for (int j = 0; j < kItems; ++j)
    {
        int const e = j * static_cast<int>(blockDim.x) + static_cast<int>(threadIdx.x);
        int64_t const t = tileBegin + e;
        if (t < tokens)
        {
            storeAs(yRow + t, sh.k[padded(e)]);
        }
    }
}

struct Plan
{
    int threads;
    int64_t tiles;
};

// Short rows get a single tile with just enough warps; longer rows use full 256-thread tiles.
Plan plan(int64_t tokens)
{
    if (tokens <= kMaxTile)
    {
        int64_t const runs = (tokens + kItems - 1) / kItems;
        int64_t const warps = (runs + kWarpSize - 1) / kWarpSize;
        return Plan{static_cast<int>(warps) * kWarpSize, 1};
    }
    return Plan{kMaxThreads, (tokens + kMaxTile - 1) / kMaxTile};
}

template <typename Forward, typename Elem>
void launch(float const* w, float const* u, void const* k, void const* v, void* y, int64_t rows, int64_t channels,
    int64_t tokens, int64_t chunkTokens, Plan const& p, float* workspace, cudaStream_t stream)
{
    Elem const* kt = static_cast<Elem const*>(k);
    Elem const* vt = static_cast<Elem const*>(v);
    unsigned const blocks = static_cast<unsigned>(rows * p.tiles);
    if (p.tiles > 1)
    {
        tileSummaryKernel<Forward, Elem><<<blocks, p.threads, 0, stream>>>(
            w, kt, vt, channels, tokens, chunkTokens, p.tiles, workspace);
        unsigned const prefixBlocks = static_cast<unsigned>((2 * rows + kPrefixThreads - 1) / kPrefixThreads);
        tilePrefixKernel<Forward><<<prefixBlocks, kPrefixThreads, 0, stream>>>(
            w, rows, channels, tokens, p.tiles, p.threads * kItems, workspace);
    }
    outputKernel<Forward, Elem><<<blocks, p.threads, 0, stream>>>(
        w, u, kt, vt, static_cast<Elem*>(y), channels, tokens, chunkTokens, p.tiles, workspace);
}

template <typename Forward>
cudaError_t launchMode(float const* w, float const* u, void const* k, void const* v, void* y, int64_t rows,
    int64_t channels, int64_t tokens, int64_t chunkTokens, HpcmBiwkvDtype dtype, Plan const& p, float* workspace,
    cudaStream_t stream)
{
    switch (dtype)
    {
    case HpcmBiwkvDtype::kFloat32:
        launch<Forward, float>(w, u, k, v, y, rows, channels, tokens, chunkTokens, p, workspace, stream);
        return cudaSuccess;
    case HpcmBiwkvDtype::kFloat16:
        launch<Forward, __half>(w, u, k, v, y, rows, channels, tokens, chunkTokens, p, workspace, stream);
        return cudaSuccess;
    }
    return cudaErrorInvalidValue;
}

int summaryFloats(HpcmBiwkvMode mode)
{
    return (mode == HpcmBiwkvMode::kVrwkv ? VrwkvForward::kFloats : ExactForward::kFloats) + kBackwardFloats;
}

bool knownMode(HpcmBiwkvMode mode)
{
    return mode == HpcmBiwkvMode::kExact || mode == HpcmBiwkvMode::kVrwkv;
}

} // namespace

size_t hpcm_biwkv_workspace_bytes(int64_t B, int64_t C, int64_t T, HpcmBiwkvMode mode)
{
    if (B <= 0 || C <= 0 || T <= 0 || !knownMode(mode))
    {
        return 0;
    }
    Plan const p = plan(T);
    if (p.tiles == 1)
    {
        return 0;
    }
    return static_cast<size_t>(B) * static_cast<size_t>(C) * static_cast<size_t>(p.tiles)
        * static_cast<size_t>(summaryFloats(mode)) * sizeof(float);
}

cudaError_t hpcm_biwkv_forward(float const* w, float const* u, void const* k, void const* v, void* y, int64_t B,
    int64_t C, int64_t T, HpcmBiwkvDtype dtype, HpcmBiwkvMode mode, void* workspace, size_t workspace_bytes,
    cudaStream_t stream)
{
    if (B < 0 || C < 0 || T < 1 || T > INT_MAX || B > INT_MAX || C > INT_MAX || !knownMode(mode))
    {
        return cudaErrorInvalidValue;
    }
    if (B == 0 || C == 0)
    {
        return cudaSuccess;
    }
    if (w == nullptr || u == nullptr || k == nullptr || v == nullptr || y == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    int64_t const rows = B * C;
    Plan const p = plan(T);
    if (rows > INT_MAX / p.tiles)
    {
        return cudaErrorInvalidValue;
    }
    size_t const needed = hpcm_biwkv_workspace_bytes(B, C, T, mode);
    if (needed > workspace_bytes || (needed > 0 && workspace == nullptr))
    {
        return cudaErrorInvalidValue;
    }
    float* const summaries = static_cast<float*>(workspace);
    cudaError_t const status = mode == HpcmBiwkvMode::kVrwkv
        ? launchMode<VrwkvForward>(w, u, k, v, y, rows, C, T,
            (T + HPCM_BIWKV_VRWKV_CHUNKS - 1) / HPCM_BIWKV_VRWKV_CHUNKS, dtype, p, summaries, stream)
        : launchMode<ExactForward>(w, u, k, v, y, rows, C, T, 0, dtype, p, summaries, stream);
    return status != cudaSuccess ? status : cudaGetLastError();
}
