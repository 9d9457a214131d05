// Checks hpcm_biwkv_forward against float64 CPU evaluations of both modes: the biwkv.md formula's
// two-direction scan (exact) and the chunk-by-chunk recurrences of Vision-RWKV's kernel (vrwkv), each
// as plugins/biwkv/reference.py writes it. Needs a CUDA GPU. `--quick` runs only small shapes (for
// compute-sanitizer and the CPU emulation in tests/cuda_emulation).

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
    HpcmBiwkvMode mode;
    // Inputs as in the RWKV cells (w = decay / T, keys in [-4, 4]) or, when wideRange, exponents that
    // span far more than float32 holds, so that the rescaling of every scan state is exercised:
    //  - exact: a positive w of order 0.1 per token; exponents then span thousands over a row. (A
    //    negative w of that size makes the exponents themselves large numbers whose float32 rounding
    //    alone exceeds the tolerance, so it is not a meaningful float32 check.)
    //  - vrwkv: keys in [-45, 45] instead. Its weights inside a chunk turn negative and its denominator
    //    nearly cancels once w * T / 32 grows past about 1, so a large w is ill-conditioned in any
    //    precision (at w = 0.03 and T = 3,000 a float32 rounding of k moves y by 3e-4), not a test of the
    //    kernel.
    bool wideRange;
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

// The vrwkv mode as Vision-RWKV's kernel computes it, chunk by chunk (reference.py's biwkv_vrwkv_scan):
// each chunk starts from its entering past and future sums, which lie one decay step further than the
// exact formula's, and updates them token by token, the future one by subtracting.
DirectionState shiftedState(DirectionState s, double logFactor)
{
    s.m += logFactor;
    return s;
}

DirectionState merged(DirectionState const& a, DirectionState const& b)
{
    double const top = std::max(a.m, b.m);
    if (std::isinf(top))
    {
        return a;
    }
    double const sa = std::isinf(a.m) ? 0.0 : std::exp(a.m - top);
    double const sb = std::isinf(b.m) ? 0.0 : std::exp(b.m - top);
    return DirectionState{top, sa * a.num + sb * b.num, sa * a.den + sb * b.den};
}

DirectionState withToken(DirectionState const& s, double k, double v, double sign)
{
    double const top = std::max(s.m, k);
    double const old = std::isinf(s.m) ? 0.0 : std::exp(s.m - top);
    double const added = sign * std::exp(k - top);
    return DirectionState{top, old * s.num + added * v, old * s.den + added};
}

std::vector<double> vrwkvReference(std::vector<float> const& w, std::vector<float> const& u,
    std::vector<double> const& k, std::vector<double> const& v, int64_t B, int64_t C, int64_t T)
{
    int64_t const length = (T + HPCM_BIWKV_VRWKV_CHUNKS - 1) / HPCM_BIWKV_VRWKV_CHUNKS;
    std::vector<double> y(k.size());
    for (int64_t row = 0; row < B * C; ++row)
    {
        double const wc = w[static_cast<size_t>(row % C)];
        double const uc = u[static_cast<size_t>(row % C)];
        double const* kr = k.data() + row * T;
        double const* vr = v.data() + row * T;
        std::vector<DirectionState> forward;  // per chunk: sum of exp(k_n - (n - s) w)
        std::vector<DirectionState> backward; // per chunk: sum of exp(k_n - (end - n) w)
        for (int64_t s = 0; s < T; s += length)
        {
            int64_t const end = std::min(s + length, T);
            DirectionState f;
            DirectionState b;
            for (int64_t n = s; n < end; ++n)
            {
                f = withToken(f, kr[n] - static_cast<double>(n - s) * wc, vr[n], 1.0);
                b = withToken(b, kr[n] - static_cast<double>(end - n) * wc, vr[n], 1.0);
            }
            forward.push_back(f);
            backward.push_back(b);
        }
        int64_t const chunks = static_cast<int64_t>(forward.size());
        for (int64_t j = 0; j < chunks; ++j)
        {
            int64_t const s = j * length;
            DirectionState past;
            for (int64_t i = 0; i < j; ++i)
            {
                past = merged(past, shiftedState(backward[i], -static_cast<double>((j - i - 1) * length) * wc));
            }
            DirectionState future;
            for (int64_t i = j; i < chunks; ++i)
            {
                future = merged(future, shiftedState(forward[i], -static_cast<double>((i - j) * length) * wc));
            }
            future = withToken(future, kr[s], vr[s], -1.0);
            for (int64_t t = s; t < std::min(s + length, T); ++t)
            {
                y[static_cast<size_t>(row * T + t)] = combineAt(past, future, uc + kr[t], vr[t]);
                past = withToken(shiftedState(past, -wc), kr[t], vr[t], 1.0);
                if (t + 1 < T)
                {
                    future = shiftedState(withToken(future, kr[t + 1], vr[t + 1], -1.0), wc);
                }
            }
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
    bool const vrwkv = c.mode == HpcmBiwkvMode::kVrwkv;
    bool const wideDecay = c.wideRange && !vrwkv;
    double const keyRange = c.wideRange && vrwkv ? 45.0 : 4.0;
    std::uniform_real_distribution<double> key(-keyRange, keyRange);
    std::uniform_real_distribution<double> value(-1.0, 1.0);
    std::vector<float> w(static_cast<size_t>(c.C));
    std::vector<float> u(static_cast<size_t>(c.C));
    for (int64_t ch = 0; ch < c.C; ++ch)
    {
        double const d = decay(rng);
        w[static_cast<size_t>(ch)] = static_cast<float>(wideDecay ? 0.1 * std::fabs(d) : d / static_cast<double>(c.T));
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
    std::vector<double> const expected
        = vrwkv ? vrwkvReference(w, u, k, v, c.B, c.C, c.T) : reference(w, u, k, v, c.B, c.C, c.T);

    size_t const elem = elementBytes(c.dtype);
    size_t const workspaceBytes = hpcm_biwkv_workspace_bytes(c.B, c.C, c.T, c.mode);
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
            dy.ptr, c.B, c.C, c.T, c.dtype, c.mode, dws.ptr, workspaceBytes, stream);
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
    std::printf("%s %s B=%lld C=%lld T=%lld %s%s%s: max err %.3g (tol %.0e)%s\n", ok ? "PASS" : "FAIL",
        vrwkv ? "vrwkv" : "exact", static_cast<long long>(c.B), static_cast<long long>(c.C),
        static_cast<long long>(c.T), half ? "fp16" : "fp32",
        c.wideRange ? (vrwkv ? " wide k" : " w=decay") : "", viaGraph ? " graph" : "", worst, tolerance,
        guardIntact ? "" : " WROTE PAST THE END OF y");
    return ok;
}

bool checkArgumentErrors(cudaStream_t stream)
{
    int64_t const B = 1;
    int64_t const C = 2;
    int64_t const T = 5000;
    HpcmBiwkvDtype const fp32 = HpcmBiwkvDtype::kFloat32;
    HpcmBiwkvMode const exact = HpcmBiwkvMode::kExact;
    HpcmBiwkvMode const vrwkv = HpcmBiwkvMode::kVrwkv;
    HpcmBiwkvMode const unknown = static_cast<HpcmBiwkvMode>(HPCM_BIWKV_MODE_COUNT);
    size_t const needed = hpcm_biwkv_workspace_bytes(B, C, T, exact);
    size_t const neededVrwkv = hpcm_biwkv_workspace_bytes(B, C, T, vrwkv);
    DeviceBuffer buffer(1024 * 1024);
    float const* f = static_cast<float const*>(buffer.ptr);
    bool ok = needed > 0 && neededVrwkv > needed && hpcm_biwkv_workspace_bytes(B, C, 2048, vrwkv) == 0
        && hpcm_biwkv_workspace_bytes(B, C, T, unknown) == 0;
    ok = ok && hpcm_biwkv_forward(f, f, f, f, buffer.ptr, B, C, T, fp32, exact, buffer.ptr, needed - 1, stream)
            == cudaErrorInvalidValue;
    ok = ok && hpcm_biwkv_forward(f, f, f, f, buffer.ptr, B, C, T, fp32, vrwkv, buffer.ptr, neededVrwkv - 1, stream)
            == cudaErrorInvalidValue;
    ok = ok && hpcm_biwkv_forward(f, f, f, f, buffer.ptr, B, C, T, fp32, unknown, buffer.ptr, neededVrwkv, stream)
            == cudaErrorInvalidValue;
    ok = ok && hpcm_biwkv_forward(f, f, f, f, buffer.ptr, B, C, 0, fp32, exact, nullptr, 0, stream)
            == cudaErrorInvalidValue;
    ok = ok && hpcm_biwkv_forward(f, f, f, f, buffer.ptr, 0, C, T, fp32, exact, nullptr, 0, stream) == cudaSuccess;
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
    for (HpcmBiwkvMode mode : {HpcmBiwkvMode::kExact, HpcmBiwkvMode::kVrwkv})
    {
        for (HpcmBiwkvDtype dtype : {HpcmBiwkvDtype::kFloat32, HpcmBiwkvDtype::kFloat16})
        {
            for (int64_t T : {1, 7, 32, 33, 255, 2048, 2049, 4500})
            {
                cases.push_back(Case{2, 3, T, dtype, mode, false});
            }
            cases.push_back(Case{1, 4, 3000, dtype, mode, true});
            if (!quick)
            {
                cases.push_back(Case{1, 640, 1536, dtype, mode, false});
                cases.push_back(Case{4, 32, 12288, dtype, mode, false});
                cases.push_back(Case{1, 16, 34560, dtype, mode, false});
                cases.push_back(Case{1, 8, 34560, dtype, mode, true});
            }
        }
    }

    bool ok = checkArgumentErrors(stream);
    for (Case const& c : cases)
    {
        ok = runCase(c, false, stream, rng) && ok;
    }
    for (HpcmBiwkvMode mode : {HpcmBiwkvMode::kExact, HpcmBiwkvMode::kVrwkv})
    {
        ok = runCase(Case{2, 5, 6000, HpcmBiwkvDtype::kFloat32, mode, false}, true, stream, rng) && ok;
    }
    CHECK_CUDA(cudaStreamDestroy(stream));
    std::printf("%s\n", ok ? "ALL PASSED" : "SOME CHECKS FAILED");
    return ok ? 0 : 1;
}
