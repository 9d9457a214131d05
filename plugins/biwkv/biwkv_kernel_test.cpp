// Checks hpcm_biwkv_forward against a float64 CPU evaluation of the biwkv.md formula.
// Needs a CUDA GPU. `--quick` runs only small shapes (for compute-sanitizer).

#include "biwkv_kernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace
{

#define CHECK_CUDA(call)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const status_ = (call);                                                                            \
        if (status_ != cudaSuccess)                                                                                    \
        {                                                                                                              \
            std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(status_));    \
            std::exit(2);                                                                                              \
        }                                                                                                              \
    } while (0)

struct Case
{
    int64_t B;
    int64_t C;
    int64_t T;
    HpcmBiwkvDtype dtype;
    // w = decay / T as in the RWKV cells, or, when absolute, a positive w of order 0.1 per token:
    // exponents then span thousands over a row, far beyond what a scan without rescaling survives.
    // (A negative w of that size makes the exponents themselves large numbers whose float32 rounding
    // alone exceeds the tolerance, so it is not a meaningful float32 check.)
    bool absoluteDecay;
};

struct DirectionState
{
    double m = -std::numeric_limits<double>::infinity();
    double num = 0.0;
    double den = 0.0;
};

// Adds token (k, v) to a running sum after decaying it by exp(-w), keeping the largest exponent as offset.
void step(DirectionState& s, double w, double k, double v)
{
    double const decayed = s.m - w;
    double const m = std::max(decayed, k);
    double const oldScale = std::isinf(decayed) ? 0.0 : std::exp(decayed - m);
    double const newScale = std::exp(k - m);
    s.num = oldScale * s.num + newScale * v;
    s.den = oldScale * s.den + newScale;
    s.m = m;
}

double combineAt(DirectionState const& past, DirectionState const& future, double diagonal, double v)
{
    double const top = std::max({past.m, future.m, diagonal});
    double const a = std::isinf(past.m) ? 0.0 : std::exp(past.m - top);
    double const b = std::isinf(future.m) ? 0.0 : std::exp(future.m - top);
    double const c = std::exp(diagonal - top);
    return (a * past.num + b * future.num + c * v) / (a * past.den + b * future.den + c);
}

std::vector<double> reference(std::vector<float> const& w, std::vector<float> const& u, std::vector<double> const& k,
    std::vector<double> const& v, int64_t B, int64_t C, int64_t T)
{
    std::vector<double> y(k.size());
    std::vector<DirectionState> past(static_cast<size_t>(T));
    for (int64_t row = 0; row < B * C; ++row)
    {
        double const wc = w[static_cast<size_t>(row % C)];
        double const uc = u[static_cast<size_t>(row % C)];
        size_t const base = static_cast<size_t>(row * T);
        DirectionState s;
        for (int64_t t = 0; t < T; ++t)
        {
            past[static_cast<size_t>(t)] = s;
            step(s, wc, k[base + t], v[base + t]);
        }
        DirectionState f;
        for (int64_t t = T - 1; t >= 0; --t)
        {
            y[base + t] = combineAt(past[static_cast<size_t>(t)], f, uc + k[base + t], v[base + t]);
            step(f, wc, k[base + t], v[base + t]);
        }
    }
    return y;
}

size_t elementBytes(HpcmBiwkvDtype dtype)
{
    return dtype == HpcmBiwkvDtype::kFloat16 ? sizeof(__half) : sizeof(float);
}

// Host values rounded to the storage dtype, so the reference sees exactly what the kernel reads.
std::vector<unsigned char> pack(std::vector<double>& values, HpcmBiwkvDtype dtype)
{
    std::vector<unsigned char> bytes(values.size() * elementBytes(dtype));
    for (size_t i = 0; i < values.size(); ++i)
    {
        if (dtype == HpcmBiwkvDtype::kFloat16)
        {
            __half const h = __float2half_rn(static_cast<float>(values[i]));
            values[i] = __half2float(h);
            std::memcpy(bytes.data() + i * sizeof(__half), &h, sizeof(__half));
        }
        else
        {
            float const f = static_cast<float>(values[i]);
            values[i] = f;
            std::memcpy(bytes.data() + i * sizeof(float), &f, sizeof(float));
        }
    }
    return bytes;
}

double unpack(std::vector<unsigned char> const& bytes, size_t i, HpcmBiwkvDtype dtype)
{
    if (dtype == HpcmBiwkvDtype::kFloat16)
    {
        __half h;
        std::memcpy(&h, bytes.data() + i * sizeof(__half), sizeof(__half));
        return __half2float(h);
    }
    float f;
    std::memcpy(&f, bytes.data() + i * sizeof(float), sizeof(float));
    return f;
}

struct DeviceBuffer
{
    void* ptr = nullptr;
    explicit DeviceBuffer(size_t bytes)
    {
        if (bytes > 0)
        {
            CHECK_CUDA(cudaMalloc(&ptr, bytes));
        }
    }
    ~DeviceBuffer()
    {
        cudaFree(ptr);
    }
    DeviceBuffer(DeviceBuffer const&) = delete;
    DeviceBuffer& operator=(DeviceBuffer const&) = delete;
};

// Writes past the end of y would land in this many guard elements, filled with a byte pattern.
constexpr size_t kGuardElements = 4096;
constexpr unsigned char kGuardByte = 0x5a;

bool runCase(Case const& c, bool viaGraph, cudaStream_t stream, std::mt19937& rng)
{
    size_t const n = static_cast<size_t>(c.B * c.C * c.T);
    std::uniform_real_distribution<double> decay(-3.0, 3.0);
    std::uniform_real_distribution<double> boost(-2.0, 2.0);
    std::uniform_real_distribution<double> key(-4.0, 4.0);
    std::uniform_real_distribution<double> value(-1.0, 1.0);
    std::vector<float> w(static_cast<size_t>(c.C));
    std::vector<float> u(static_cast<size_t>(c.C));
    for (int64_t ch = 0; ch < c.C; ++ch)
    {
        double const d = decay(rng);
        w[static_cast<size_t>(ch)] = static_cast<float>(c.absoluteDecay ? 0.1 * std::fabs(d) : d / static_cast<double>(c.T));
        u[static_cast<size_t>(ch)] = static_cast<float>(boost(rng) / static_cast<double>(c.T));
    }
    std::vector<double> k(n);
    std::vector<double> v(n);
    for (size_t i = 0; i < n; ++i)
    {
        k[i] = key(rng);
        v[i] = value(rng);
    }
    std::vector<unsigned char> const kBytes = pack(k, c.dtype);
    std::vector<unsigned char> const vBytes = pack(v, c.dtype);
    std::vector<double> const expected = reference(w, u, k, v, c.B, c.C, c.T);

    size_t const elem = elementBytes(c.dtype);
    size_t const workspaceBytes = hpcm_biwkv_workspace_bytes(c.B, c.C, c.T);
    DeviceBuffer dw(w.size() * sizeof(float));
    DeviceBuffer du(u.size() * sizeof(float));
    DeviceBuffer dk(n * elem);
    DeviceBuffer dv(n * elem);
    DeviceBuffer dy((n + kGuardElements) * elem);
    DeviceBuffer dws(workspaceBytes);
    CHECK_CUDA(cudaMemcpyAsync(dw.ptr, w.data(), w.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
    CHECK_CUDA(cudaMemcpyAsync(du.ptr, u.data(), u.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
    CHECK_CUDA(cudaMemcpyAsync(dk.ptr, kBytes.data(), kBytes.size(), cudaMemcpyHostToDevice, stream));
    CHECK_CUDA(cudaMemcpyAsync(dv.ptr, vBytes.data(), vBytes.size(), cudaMemcpyHostToDevice, stream));
    CHECK_CUDA(cudaMemsetAsync(dy.ptr, kGuardByte, (n + kGuardElements) * elem, stream));

    auto const forward = [&]()
    {
        return hpcm_biwkv_forward(static_cast<float const*>(dw.ptr), static_cast<float const*>(du.ptr), dk.ptr, dv.ptr,
            dy.ptr, c.B, c.C, c.T, c.dtype, dws.ptr, workspaceBytes, stream);
    };
    if (viaGraph)
    {
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        CHECK_CUDA(forward());
        CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
        CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
        CHECK_CUDA(cudaGraphLaunch(exec, stream));
        CHECK_CUDA(cudaStreamSynchronize(stream));
        CHECK_CUDA(cudaGraphExecDestroy(exec));
        CHECK_CUDA(cudaGraphDestroy(graph));
    }
    else
    {
        CHECK_CUDA(forward());
    }
    std::vector<unsigned char> yBytes((n + kGuardElements) * elem);
    CHECK_CUDA(cudaMemcpyAsync(yBytes.data(), dy.ptr, yBytes.size(), cudaMemcpyDeviceToHost, stream));
    CHECK_CUDA(cudaStreamSynchronize(stream));

    bool const half = c.dtype == HpcmBiwkvDtype::kFloat16;
    double const tolerance = half ? 1e-3 : 1e-5;
    double worst = 0.0;
    size_t failures = 0;
    for (size_t i = 0; i < n; ++i)
    {
        double const got = unpack(yBytes, i, c.dtype);
        double const err = std::fabs(got - expected[i]) / (std::fabs(expected[i]) + 1.0);
        if (!(err <= tolerance))
        {
            ++failures;
        }
        worst = std::isnan(err) ? err : std::max(worst, err);
    }
    bool const guardIntact = std::all_of(
        yBytes.begin() + static_cast<std::ptrdiff_t>(n * elem), yBytes.end(), [](unsigned char b) { return b == kGuardByte; });
    bool const ok = failures == 0 && guardIntact;
    std::printf("%s B=%lld C=%lld T=%lld %s%s%s: max err %.3g (tol %.0e)%s\n", ok ? "PASS" : "FAIL",
        static_cast<long long>(c.B), static_cast<long long>(c.C), static_cast<long long>(c.T), half ? "fp16" : "fp32",
        c.absoluteDecay ? " w=decay" : "", viaGraph ? " graph" : "", worst, tolerance,
        guardIntact ? "" : " WROTE PAST THE END OF y");
    return ok;
}

bool checkArgumentErrors(cudaStream_t stream)
{
    int64_t const B = 1;
    int64_t const C = 2;
    int64_t const T = 5000;
    size_t const needed = hpcm_biwkv_workspace_bytes(B, C, T);
    DeviceBuffer buffer(1024 * 1024);
    float const* f = static_cast<float const*>(buffer.ptr);
    bool ok = needed > 0 && hpcm_biwkv_workspace_bytes(B, C, 2048) == 0;
    ok = ok
        && hpcm_biwkv_forward(f, f, f, f, buffer.ptr, B, C, T, HpcmBiwkvDtype::kFloat32, buffer.ptr, needed - 1, stream)
            == cudaErrorInvalidValue;
    ok = ok
        && hpcm_biwkv_forward(f, f, f, f, buffer.ptr, B, C, 0, HpcmBiwkvDtype::kFloat32, nullptr, 0, stream)
            == cudaErrorInvalidValue;
    ok = ok
        && hpcm_biwkv_forward(f, f, f, f, buffer.ptr, 0, C, T, HpcmBiwkvDtype::kFloat32, nullptr, 0, stream)
            == cudaSuccess;
    std::printf("%s argument checks\n", ok ? "PASS" : "FAIL");
    return ok;
}

} // namespace

int main(int argc, char** argv)
{
    bool const quick = argc > 1 && std::string(argv[1]) == "--quick";
    cudaStream_t stream;
    CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::mt19937 rng(1234);

    std::vector<Case> cases;
    for (HpcmBiwkvDtype dtype : {HpcmBiwkvDtype::kFloat32, HpcmBiwkvDtype::kFloat16})
    {
        for (int64_t T : {1, 7, 32, 33, 255, 2048, 2049, 4500})
        {
            cases.push_back(Case{2, 3, T, dtype, false});
        }
        cases.push_back(Case{1, 4, 3000, dtype, true});
        if (!quick)
        {
            cases.push_back(Case{1, 640, 1536, dtype, false});
            cases.push_back(Case{4, 32, 12288, dtype, false});
            cases.push_back(Case{1, 16, 34560, dtype, false});
            cases.push_back(Case{1, 8, 34560, dtype, true});
        }
    }

    bool ok = checkArgumentErrors(stream);
    for (Case const& c : cases)
    {
        ok = runCase(c, false, stream, rng) && ok;
    }
    ok = runCase(Case{2, 5, 6000, HpcmBiwkvDtype::kFloat32, false}, true, stream, rng) && ok;
    CHECK_CUDA(cudaStreamDestroy(stream));
    std::printf("%s\n", ok ? "ALL PASSED" : "SOME CHECKS FAILED");
    return ok ? 0 : 1;
}
