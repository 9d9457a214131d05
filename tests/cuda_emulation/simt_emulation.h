// Runs CUDA kernel source on CPU threads, so the kernel's indexing, tiling, barriers and warp
// shuffles are exercised on machines without a GPU (CI), under AddressSanitizer or ThreadSanitizer.
//
// Use: compile the .cu file as C++ with this header force-included (g++ -include simt_emulation.h),
// after rewriting each launch `kernel<<<grid, block, shared, stream>>>(args)` into
// `::simt::launch(grid, block, shared, stream, kernel, args)` (tests/cuda_emulation.py does both),
// and link cuda_runtime_emulation.cpp instead of libcudart.
//
// Model: the blocks of a grid run one after another on the same blockDim.x std::threads.
//   __syncthreads      a barrier of the block's threads;
//   __shfl_*_sync      lanes write into a per-warp slot array between two warp barriers, so every
//                      lane of the warp must reach the shuffle (full mask, as sm_70+ requires);
//   __shared__         a function-local static, shared by the threads of the running block.
// It checks logic and memory discipline, not float rounding of device intrinsics, speed or occupancy.
#pragma once

// Defined before the CUDA headers, which keep an existing definition in host compilation.
#define __shared__ static
#define __launch_bounds__(...)

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <math_constants.h>

#include <math.h>

#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

// math_constants.h spells float infinity with this device intrinsic.
inline float __int_as_float(unsigned int bits)
{
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

namespace simt
{

constexpr unsigned kWarpSize = 32;

[[noreturn]] inline void fail(char const* what)
{
    std::fprintf(stderr, "simt emulation: %s\n", what);
    std::abort();
}

struct Warp
{
    explicit Warp(unsigned lanes)
        : lanes(lanes)
        , barrier(static_cast<std::ptrdiff_t>(lanes))
    {
    }
    unsigned lanes;
    std::barrier<> barrier;
    uint32_t slots[kWarpSize];
};

struct Block
{
    explicit Block(unsigned threads)
        : barrier(static_cast<std::ptrdiff_t>(threads))
    {
        for (unsigned first = 0; first < threads; first += kWarpSize)
        {
            warps.push_back(std::make_unique<Warp>(threads - first < kWarpSize ? threads - first : kWarpSize));
        }
    }
    std::barrier<> barrier;
    std::vector<std::unique_ptr<Warp>> warps;
};

struct ThreadContext
{
    uint3 threadIndex;
    uint3 blockIndex;
    dim3 blockDimension;
    dim3 gridDimension;
    Block* block;
};

inline thread_local ThreadContext context{};

// Queues `work` on `stream` (runs it now, or records it while the stream is being captured) and
// records `status` for cudaGetLastError. Defined in cuda_runtime_emulation.cpp.
void submit(cudaStream_t stream, std::function<void()> work, cudaError_t status);

// One std::thread per thread of a block, reused for every block of the grid; the block barrier
// between blocks keeps a thread from starting the next block while others still use __shared__.
inline void runGrid(dim3 grid, dim3 block, std::function<void()> const& body)
{
    Block shared(block.x);
    std::vector<std::thread> threads;
    threads.reserve(block.x);
    for (unsigned t = 0; t < block.x; ++t)
    {
        threads.emplace_back(
            [&, t]
            {
                for (unsigned b = 0; b < grid.x; ++b)
                {
                    context = ThreadContext{uint3{t, 0, 0}, uint3{b, 0, 0}, block, grid, &shared};
                    body();
                    shared.barrier.arrive_and_wait();
                }
            });
    }
    for (std::thread& thread : threads)
    {
        thread.join();
    }
}

// The emulated `kernel<<<grid, block, dynamicShared, stream>>>(args...)`. Only one-dimensional
// grids and blocks without dynamic shared memory, which is all the project's kernels use.
template <typename... Params, typename... Args>
void launch(dim3 grid, dim3 block, size_t dynamicShared, cudaStream_t stream, void (*kernel)(Params...), Args... args)
{
    static_assert(sizeof...(Params) == sizeof...(Args), "kernel called with the wrong number of arguments");
    bool const valid = grid.x >= 1 && grid.y == 1 && grid.z == 1 && block.x >= 1 && block.x <= 1024 && block.y == 1
        && block.z == 1 && dynamicShared == 0;
    if (!valid)
    {
        submit(stream, [] {}, cudaErrorInvalidConfiguration);
        return;
    }
    submit(stream, [=] { runGrid(grid, block, [=] { kernel(args...); }); }, cudaSuccess);
}

inline unsigned laneId()
{
    return context.threadIndex.x % kWarpSize;
}

template <typename T>
T exchange(unsigned mask, T value, unsigned sourceLane)
{
    static_assert(sizeof(T) == sizeof(uint32_t) && std::is_trivially_copyable_v<T>, "32-bit shuffles only");
    Warp& warp = *context.block->warps[context.threadIndex.x / kWarpSize];
    if (mask != 0xffffffffu || warp.lanes != kWarpSize)
    {
        fail("shuffle without a full warp and a full mask");
    }
    unsigned const lane = laneId();
    std::memcpy(&warp.slots[lane], &value, sizeof value);
    warp.barrier.arrive_and_wait();
    T result;
    std::memcpy(&result, &warp.slots[sourceLane], sizeof result);
    warp.barrier.arrive_and_wait();
    return result;
}

} // namespace simt

#define threadIdx (::simt::context.threadIndex)
#define blockIdx (::simt::context.blockIndex)
#define blockDim (::simt::context.blockDimension)
#define gridDim (::simt::context.gridDimension)

inline void __syncthreads()
{
    ::simt::context.block->barrier.arrive_and_wait();
}

// Width is the whole warp: lanes with no source in range keep their own value, as on the GPU.
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta)
{
    unsigned const lane = ::simt::laneId();
    return ::simt::exchange(mask, value, lane >= delta ? lane - delta : lane);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta)
{
    unsigned const lane = ::simt::laneId();
    return ::simt::exchange(mask, value, lane + delta < ::simt::kWarpSize ? lane + delta : lane);
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int sourceLane)
{
    return ::simt::exchange(mask, value, static_cast<unsigned>(sourceLane) % ::simt::kWarpSize);
}
