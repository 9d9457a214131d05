// The part of the CUDA runtime API that the kernel and its self-test use, on host memory, for the
// SIMT emulation in simt_emulation.h. Linked instead of libcudart.
//
// Device memory is plain malloc memory of exactly the requested size, so AddressSanitizer sees
// every access past a buffer. Stream work runs at once, in order; while a stream is captured it
// is recorded instead and replayed by cudaGraphLaunch, like a CUDA graph.

#include "simt_emulation.h"

#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

struct CUstream_st
{
    bool capturing = false;
    std::vector<std::function<void()>> captured;
};

struct CUgraph_st
{
    std::vector<std::function<void()>> work;
};

struct CUgraphExec_st
{
    std::vector<std::function<void()>> work;
};

namespace
{

thread_local cudaError_t lastError = cudaSuccess;

cudaError_t record(cudaError_t status)
{
    if (status != cudaSuccess)
    {
        lastError = status;
    }
    return status;
}

} // namespace

namespace simt
{

void submit(cudaStream_t stream, std::function<void()> work, cudaError_t status)
{
    if (record(status) != cudaSuccess)
    {
        return;
    }
    if (stream != nullptr && stream->capturing)
    {
        stream->captured.push_back(std::move(work));
        return;
    }
    work();
}

} // namespace simt

extern "C"
{

cudaError_t cudaGetLastError(void)
{
    return std::exchange(lastError, cudaSuccess);
}

char const* cudaGetErrorString(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    default: return "error (emulated)";
    }
}

cudaError_t cudaMalloc(void** pointer, size_t bytes)
{
    *pointer = std::malloc(bytes);
    return record(*pointer == nullptr ? cudaErrorMemoryAllocation : cudaSuccess);
}

cudaError_t cudaFree(void* pointer)
{
    std::free(pointer);
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int /*flags*/)
{
    *stream = new CUstream_st();
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    return record(stream != nullptr && stream->capturing ? cudaErrorStreamCaptureUnsupported : cudaSuccess);
}

cudaError_t cudaMemcpyAsync(void* destination, void const* source, size_t bytes, cudaMemcpyKind /*kind*/,
    cudaStream_t stream)
{
    simt::submit(stream, [=] { std::memcpy(destination, source, bytes); }, cudaSuccess);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* destination, int value, size_t bytes, cudaStream_t stream)
{
    simt::submit(stream, [=] { std::memset(destination, value, bytes); }, cudaSuccess);
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode /*mode*/)
{
    if (stream == nullptr || stream->capturing)
    {
        return record(cudaErrorIllegalState);
    }
    stream->capturing = true;
    stream->captured.clear();
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph)
{
    if (stream == nullptr || !stream->capturing)
    {
        return record(cudaErrorIllegalState);
    }
    stream->capturing = false;
    *graph = new CUgraph_st{std::exchange(stream->captured, {})};
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long /*flags*/)
{
    *exec = new CUgraphExec_st{graph->work};
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream)
{
    for (std::function<void()> const& work : exec->work)
    {
        simt::submit(stream, work, cudaSuccess);
    }
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    delete exec;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    delete graph;
    return cudaSuccess;
}

} // extern "C"
