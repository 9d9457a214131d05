// CPU Bi-WKV; the scan state is the one of biwkv_kernel.cu (see README.md, "Parallelisation"):
// exp(m) * (num, den) is the weighted sum of (v, 1) over the tokens seen, m the largest exponent,
// so nothing overflows whatever the decay. One row is O(T) with five exp per token (eight in vrwkv).
// The state is double: a sequential float32 scan drifts with T (measured 2.9e-5 max abs error at
// T = 34,560 against the float64 reference, 1e-8 with double), and on a CPU double costs little more.
//
// The vrwkv mode in the terms of these scans (README.md, "The vrwkv mode"): for t in the chunk that
// starts at s,
//   past_t    = exp(-w) * P_s seen from t, plus the tokens s..t-1 as the exact scan weighs them
//   future_t  = exp(-w) * F_t
//   restart_t = (1 - exp(w)) * sum_{s<n<=t} exp((t-n) w) exp(k_n) (v_n, 1)
// with P and F the exact scans' states (tokens before and after t), so y_t = (past + future +
// exp(u + k_t) v_t + restart) / (the same with 1 for v). Only restart has a signed coefficient, as in
// the formula itself; no part is a difference of sums.

#include "biwkv_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

namespace
{

struct Scan
{
    double m;
    double num;
    double den;
};

constexpr Scan kEmpty{-std::numeric_limits<double>::infinity(), 0.0, 0.0};

// Appends one token on the near side of the run: the run's weights decay by exp(-w), the token
// enters with exp(k). One of the two rescaling factors is exp(0) = 1.
inline Scan push(Scan s, double k, double v, double w)
{
    double const decayed = s.m - w;
    double const e = std::exp(-std::fabs(decayed - k));
    bool const keep = decayed >= k;
    double const a = keep ? 1.0 : e;
    double const b = keep ? e : 1.0;
    return Scan{keep ? decayed : k, a * s.num + b * v, a * s.den + b};
}

// y_t from the runs before and after t, the bonus term exp(u + k_t) v_t and, in vrwkv, the chunk
// restart's leftover `restart` times its (signed) coefficient.
inline float mix(Scan const& past, Scan const& future, double diagonal, double v, Scan const& restart = kEmpty,
    double restartCoefficient = 0.0)
{
    double const top = std::max(std::max(past.m, future.m), std::max(diagonal, restart.m));
    double const a = std::exp(past.m - top);
    double const b = std::exp(future.m - top);
    double const c = std::exp(diagonal - top);
    double const r = restartCoefficient * std::exp(restart.m - top);
    return static_cast<float>((a * past.num + b * future.num + c * v + r * restart.num)
        / (a * past.den + b * future.den + c + r * restart.den));
}

// The same run seen one decay step further away.
inline Scan shifted(Scan s, double w)
{
    return Scan{s.m - w, s.num, s.den};
}

float halfToFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t const exponent = (h >> 10) & 0x1fu;
    uint32_t const mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0)
    {
        float const magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f; // 2^-24, exact
        std::memcpy(&bits, &magnitude, sizeof(bits));
        bits |= sign;
    }
    else if (exponent == 31)
    {
        bits = sign | 0x7f800000u | (mantissa << 13);
    }
    else
    {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

// Round to nearest even, as every IEEE conversion (and numpy's astype(float16)) does.
uint16_t floatToHalf(float f)
{
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    uint16_t const sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
    uint32_t const magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u)
    {
        return static_cast<uint16_t>(sign | 0x7e00u); // NaN stays NaN
    }
    if (magnitude >= 0x477ff000u)
    {
        return static_cast<uint16_t>(sign | 0x7c00u); // 65520 and above round to infinity
    }
    if (magnitude < 0x38800000u)
    {
        // Below 2^-14: a subnormal half counts units of 2^-24; scaling by 2^24 is exact.
        float absolute;
        std::memcpy(&absolute, &magnitude, sizeof(absolute));
        return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(absolute * 16777216.0f)));
    }
    uint32_t half = ((magnitude >> 23) - 112u) << 10 | ((magnitude >> 13) & 0x3ffu);
    uint32_t const rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u)))
    {
        ++half; // a carry into the exponent is the correct rounding
    }
    return static_cast<uint16_t>(sign | half);
}

inline float load(float x)
{
    return x;
}

inline float load(uint16_t x)
{
    return halfToFloat(x);
}

inline void store(float* p, float x)
{
    *p = x;
}

inline void store(uint16_t* p, float x)
{
    *p = floatToHalf(x);
}

template <typename Elem>
void rows(float const* w, float const* u, Elem const* k, Elem const* v, Elem* y, int64_t C, int64_t T, int32_t mode,
    int64_t first, int64_t last)
{
    bool const vrwkv = mode == HPCM_BIWKV_MODE_VRWKV;
    int64_t const chunk = (T + HPCM_BIWKV_VRWKV_CHUNKS - 1) / HPCM_BIWKV_VRWKV_CHUNKS;
    std::vector<Scan> past(static_cast<size_t>(T));
    std::vector<Scan> restarts(vrwkv ? static_cast<size_t>(T) : 0);
    std::vector<float> keys(static_cast<size_t>(T));
    std::vector<float> values(static_cast<size_t>(T));
    for (int64_t row = first; row < last; ++row)
    {
        double const wc = w[row % C];
        double const uc = u[row % C];
        Elem const* kRow = k + row * T;
        Elem const* vRow = v + row * T;
        Elem* yRow = y + row * T;
        Scan exact = kEmpty;   // every token before t, weighed as the exact formula does
        Scan chunked = kEmpty; // vrwkv: past_t
        Scan restart = kEmpty; // vrwkv: tokens s+1..t, weighed exp((t-n) w): a scan with decay -w
        for (int64_t t = 0; t < T; ++t)
        {
            keys[t] = load(kRow[t]);
            values[t] = load(vRow[t]);
            if (vrwkv)
            {
                bool const start = t % chunk == 0;
                chunked = start ? shifted(exact, wc) : chunked;
                restart = start ? kEmpty : push(restart, keys[t], values[t], -wc);
                restarts[t] = restart;
                past[t] = chunked;
                chunked = push(chunked, keys[t], values[t], wc);
            }
            else
            {
                past[t] = exact;
            }
            exact = push(exact, keys[t], values[t], wc);
        }
        Scan backward = kEmpty;
        for (int64_t t = T - 1; t >= 0; --t)
        {
            store(yRow + t,
                vrwkv ? mix(past[t], shifted(backward, wc), uc + keys[t], values[t], restarts[t], -std::expm1(wc))
                      : mix(past[t], backward, uc + keys[t], values[t]));
            backward = push(backward, keys[t], values[t], wc);
        }
    }
}

template <typename Elem>
int forward(float const* w, float const* u, Elem const* k, Elem const* v, Elem* y, int64_t B, int64_t C,
    int64_t T, int32_t mode, int threads)
{
    if (B < 0 || C < 0 || T < 1 || mode < 0 || mode >= HPCM_BIWKV_MODE_COUNT)
    {
        return -1;
    }
    int64_t const total = B * C;
    if (total == 0)
    {
        return 0;
    }
    if (w == nullptr || u == nullptr || k == nullptr || v == nullptr || y == nullptr)
    {
        return -1;
    }
    int64_t workers = threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency());
    // Below ~64K tokens per worker a thread costs more than it saves.
    workers = std::max<int64_t>(1, std::min(workers, total * T / 65536));
    workers = std::min(workers, total);
    if (workers == 1)
    {
        rows(w, u, k, v, y, C, T, mode, 0, total);
        return 0;
    }
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(workers));
    for (int64_t i = 0; i < workers; ++i)
    {
        int64_t const first = total * i / workers;
        int64_t const last = total * (i + 1) / workers;
        pool.emplace_back([=] { rows(w, u, k, v, y, C, T, mode, first, last); });
    }
    for (std::thread& worker : pool)
    {
        worker.join();
    }
    return 0;
}

} // namespace

extern "C" int hpcm_biwkv_cpu_f32(float const* w, float const* u, float const* k, float const* v, float* y,
    int64_t B, int64_t C, int64_t T, int32_t mode, int threads)
{
    return forward(w, u, k, v, y, B, C, T, mode, threads);
}

extern "C" int hpcm_biwkv_cpu_f16(float const* w, float const* u, uint16_t const* k, uint16_t const* v,
    uint16_t* y, int64_t B, int64_t C, int64_t T, int32_t mode, int threads)
{
    return forward(w, u, k, v, y, B, C, T, mode, threads);
}
