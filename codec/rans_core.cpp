// Interleaved rANS over 16-bit quantized CDF tables, driven by a table index per symbol, and the work
// around it for one coding step: scale buckets, the boundary guard's candidate screen, and independent
// substreams coded or decoded in parallel by a thread pool.
//
// Substreams (bitstream format 3; the pure-Python coder in rans.py writes and reads the same words):
//   * a step's symbols are cut into contiguous ranges (the offsets come from rans.py), each coded into
//     its own substream, so substreams code and decode in any order on any number of threads: the
//     thread count never changes a word.
//   * kLanes = 4 interleaved 32-bit states per substream; symbol j of a substream uses state j % 4.
//   * state interval [2^16, 2^32), 16-bit renormalisation words, 16-bit probabilities.
//   * a substream is a sequence of uint16 words: the final encoder states (lane 0 first, high word
//     first), then the renormalisation words in decoding order.
//   * a value outside its table's range is coded as the table's tail symbol (cdf_length - 2) and goes,
//     in coding order, to the substream's list of escaped values (stored by rans.py).
//   * the encoder starts every lane at 2^16, so a decoder that used exactly the substream's words and
//     escaped values and ends with every lane at 2^16 has proof that it read the substream consistently.
// Format 2 streams (decoded only, hpcm_rans_decode) are one such substream for all symbols of an image.
//
// Scale buckets: the index of a scale is the number of bounds (the scale table without its last entry)
// strictly below it, NaN and non-positive scales 0, as hpcm.models.cdf_tables.scale_indexes computes
// it. A lookup table over the top bits of the float's pattern (monotonic for positive floats) gives the
// bounds below the float's cell; comparisons with the bounds finish the count exactly.
//
// Everything is plain integer arithmetic and float comparisons, so the output does not depend on
// compiler or platform.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace {

constexpr uint32_t kProbBits = 16;
constexpr uint32_t kLow = 1u << 16;
constexpr uint32_t kLutBits = 12;
constexpr uint32_t kLutShift = kProbBits - kLutBits;
constexpr int kLanes = 4;
constexpr int kBucketShift = 17;  // float bits >> 17: sign, exponent and 6 mantissa bits (cells 1.1 % wide)
constexpr int32_t kMaxAbsValue = 1 << 30;

// Error codes shared with rans.py.
constexpr int kEnded = -1;         // a stream ended before all symbols were decoded / output too small
constexpr int kBadIndex = -2;      // a table index out of range
constexpr int kBadEscape = -3;     // more escaped values used than the substream has
constexpr int kInconsistent = -5;  // trailing words or escaped values, or a final state other than 2^16
constexpr int kBadState = -6;      // an initial state below 2^16, or fewer words than the states
constexpr int kBadValue = -7;      // a value to code that is not a number within +-2^30

struct Tables {
    const int32_t* cdf;
    int64_t stride;
    const int32_t* length;
    const int32_t* offset;
    int64_t count;
};

struct Buckets {
    const float* bounds;  // nb bounds, strictly increasing, positive and finite, then +inf
    int32_t nb;
    const uint16_t* lut;     // 1 << (31 - kBucketShift) cells
    const float* near_low;   // per bucket i (nb + 1): a scale at or above it lies near bound i (+inf for i = nb)
    const float* near_high;  // per bucket i: a scale at or below it lies near bound i - 1 (-inf for i = 0)
};

// ------------------------------------------------------------------ thread pool

// Worker threads that run queued tasks; never destroyed (no join at exit, when the library may be
// unloaded in any order). A forked child starts a pool of its own.
class Pool {
public:
    void submit(std::function<void()> task, int workers) {
        std::lock_guard<std::mutex> lock(mutex_);
        while (static_cast<int>(threads_.size()) < workers) {
            threads_.emplace_back([this] { work(); });
            threads_.back().detach();
        }
        tasks_.push_back(std::move(task));
        ready_.notify_one();
    }

private:
    void work() {
        for (;;) {
            std::function<void()> task;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                ready_.wait(lock, [this] { return !tasks_.empty(); });
                task = std::move(tasks_.front());
                tasks_.pop_front();
            }
            task();
        }
    }

    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<std::function<void()>> tasks_;
    std::vector<std::thread> threads_;
};

Pool& pool() {
    static std::mutex guard;
    static Pool* instance = nullptr;
    static pid_t owner = 0;
    std::lock_guard<std::mutex> lock(guard);
    if (instance == nullptr || owner != getpid()) {  // the parent's threads do not exist in a fork
        instance = new Pool();
        owner = getpid();
    }
    return *instance;
}

// fn(i) for i in [0, count) on the calling thread and up to threads - 1 pool workers. Workers that
// start after every index is taken return at once without touching fn, so the caller waits only for
// the calls in progress.
struct Group {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t count = 0;
    const std::function<void(int64_t)>* fn = nullptr;
    std::mutex mutex;
    std::condition_variable finished;

    void take() {
        for (;;) {
            const int64_t i = next.fetch_add(1);
            if (i >= count) return;
            (*fn)(i);
            if (done.fetch_add(1) + 1 == count) {
                std::lock_guard<std::mutex> lock(mutex);
                finished.notify_all();
            }
        }
    }
};

void parallel_for(int64_t count, int threads, const std::function<void(int64_t)>& fn) {
    const int64_t helpers = std::min<int64_t>(threads, count) - 1;
    if (helpers <= 0) {
        for (int64_t i = 0; i < count; ++i) fn(i);
        return;
    }
    auto group = std::make_shared<Group>();
    group->count = count;
    group->fn = &fn;
    for (int64_t h = 0; h < helpers; ++h) pool().submit([group] { group->take(); }, static_cast<int>(helpers));
    group->take();
    std::unique_lock<std::mutex> lock(group->mutex);
    group->finished.wait(lock, [&] { return group->done.load() == count; });
}

// ------------------------------------------------------------------ substreams

constexpr int64_t kBlock = 1024;  // symbols whose table rows are found in one pass before they are coded

// Table rows of symbols [b0, b1) into rows[0..): the given indexes, or the buckets of the scales,
// appending the positions the guard's screen flags to cand (*nc counts them; cand needs room for
// b1 - b0 more). Returns 0 or kBadIndex.
int rows_of(const int32_t* __restrict indexes, const float* __restrict scales, const Buckets& bk, int64_t count,
            int64_t b0, int64_t b1, int32_t* __restrict rows, int64_t* __restrict cand, int64_t* nc) {
    if (indexes != nullptr) {
        uint32_t worst = 0;
        for (int64_t i = b0; i < b1; ++i) {
            rows[i - b0] = indexes[i];
            worst = std::max(worst, static_cast<uint32_t>(indexes[i]));
        }
        return worst < static_cast<uint64_t>(count) || b1 == b0 ? 0 : kBadIndex;
    }
    const float* __restrict bounds = bk.bounds;
    const uint16_t* __restrict lut = bk.lut;
    for (int64_t i = b0; i < b1; ++i) {
        const float s = scales[i];
        uint32_t bits;
        std::memcpy(&bits, &s, sizeof bits);
        // NaN, zero and negative scales go to cell 0; masked, not branched on (scales of either sign mix)
        const uint32_t cell = (bits >> kBucketShift) & (0u - static_cast<uint32_t>(s > 0.0f));
        int32_t r = lut[cell];
        r += bounds[r] < s;
        while (bounds[r] < s) ++r;  // a second bound in the cell (not in log-spaced tables); +inf ends it
        rows[i - b0] = r;
    }
    if (bk.near_low != nullptr) {
        const float* __restrict low = bk.near_low;
        const float* __restrict high = bk.near_high;
        int64_t n = *nc;
        for (int64_t i = b0; i < b1; ++i) {
            const float s = scales[i];
            const int32_t r = rows[i - b0];
            cand[n] = i;
            n += (s <= high[r]) | (s >= low[r]);
        }
        *nc = n;
    }
    return 0;
}

// Codes symbols [begin, end) into region[0, cap) (cap >= end - begin + 2 * kLanes) from its end
// backwards; *first = its first word. Escaped values go to esc[0..*n_esc), candidates of the guard
// screen to cand[0..*n_cand), both in increasing position.
int encode_part(const float* __restrict values, const int32_t* indexes, const float* scales, const Buckets& bk,
                int64_t begin, int64_t end, const Tables& t, uint16_t* __restrict region, int64_t cap,
                int64_t* first, int32_t* __restrict esc, int64_t* n_esc, int64_t* cand, int64_t* n_cand) {
    const int32_t* __restrict cdf = t.cdf;
    const int32_t* __restrict length = t.length;
    const int32_t* __restrict offset = t.offset;
    const int64_t stride = t.stride;
    const float limit = static_cast<float>(kMaxAbsValue);
    uint32_t x[kLanes] = {kLow, kLow, kLow, kLow};
    int64_t pos = cap;
    int64_t ne = 0;
    bool bad_value = false;
    int32_t rows[kBlock];
    std::vector<int64_t> block_cand;  // per block (from the last): where its candidates start, how many
    auto code = [&](uint32_t& st, int32_t idx, int64_t i) {
        const float v = values[i];
        const bool ok = v >= -limit && v <= limit;  // false for NaN
        bad_value |= !ok;
        const int32_t value = static_cast<int32_t>(ok ? v : 0.0f);
        const int32_t* c = cdf + idx * stride;
        const int32_t tail = length[idx] - 2;
        int32_t s = value - offset[idx];
        if (static_cast<uint32_t>(s) >= static_cast<uint32_t>(tail)) {
            esc[ne++] = value;
            s = tail;
        }
        const uint32_t start = static_cast<uint32_t>(c[s]);
        const uint32_t freq = static_cast<uint32_t>(c[s + 1]) - start;
        const bool renorm = st >= (freq << 16);
        region[pos - 1] = static_cast<uint16_t>(st & 0xffffu);  // kept only when renorm; pos > 0 by cap
        pos -= renorm;
        const uint32_t y = renorm ? st >> 16 : st;
        st = ((y / freq) << kProbBits) + (y % freq) + start;
    };
    const int64_t blocks = (end - begin + kBlock - 1) / kBlock;
    for (int64_t k = blocks - 1; k >= 0; --k) {
        const int64_t b0 = begin + k * kBlock;
        const int64_t b1 = std::min(end, b0 + kBlock);
        int64_t nc = 0;
        const int rc = rows_of(indexes, scales, bk, t.count, b0, b1, rows, cand + (b0 - begin), &nc);
        if (rc != 0) return rc;
        block_cand.push_back(nc);
        int64_t i = b1 - 1;
        for (; i >= b0 && ((i - begin) & 3) != 3; --i) {  // the block's last, incomplete group
            switch ((i - begin) & 3) {
                case 0: code(x[0], rows[i - b0], i); break;
                case 1: code(x[1], rows[i - b0], i); break;
                default: code(x[2], rows[i - b0], i); break;
            }
        }
        for (; i >= b0; i -= 4) {
            code(x[3], rows[i - b0], i);
            code(x[2], rows[i - 1 - b0], i - 1);
            code(x[1], rows[i - 2 - b0], i - 2);
            code(x[0], rows[i - 3 - b0], i - 3);
        }
    }
    if (bad_value) return kBadValue;
    for (int l = kLanes - 1; l >= 0; --l) {
        region[--pos] = static_cast<uint16_t>(x[l] & 0xffffu);
        region[--pos] = static_cast<uint16_t>(x[l] >> 16);
    }
    std::reverse(esc, esc + ne);
    // candidates: block k's lie at cand[k * kBlock ...]; move them together in increasing order
    int64_t nc = 0;
    for (int64_t k = 0; k < blocks; ++k) {
        const int64_t count = block_cand[blocks - 1 - k];
        std::memmove(cand + nc, cand + k * kBlock, static_cast<size_t>(count) * sizeof(int64_t));
        nc += count;
    }
    *first = pos;
    *n_esc = ne;
    *n_cand = nc;
    return 0;
}

int decode_part(const uint16_t* __restrict in, int64_t n_words, const int32_t* __restrict esc, int64_t n_esc,
                const int32_t* indexes, const float* scales, const Buckets& bk, int64_t begin, int64_t end,
                const int64_t* ov_pos, const int32_t* ov_val, int64_t n_ov, const Tables& t,
                const uint16_t* __restrict lut, float* __restrict out) {
    if (n_words < 2 * kLanes) return kBadState;
    uint32_t x[kLanes];
    for (int l = 0; l < kLanes; ++l) {
        x[l] = (static_cast<uint32_t>(in[2 * l]) << 16) | in[2 * l + 1];
        if (x[l] < kLow) return kBadState;
    }
    const int32_t* __restrict cdf = t.cdf;
    const int32_t* __restrict length = t.length;
    const int32_t* __restrict offset = t.offset;
    const int64_t stride = t.stride;
    const int64_t last = n_words - 1;
    int64_t pos = 2 * kLanes;
    int64_t e = 0;
    int64_t ov = 0;
    int32_t rows[kBlock];
    int64_t unused = 0;
    // Reads past the end are clamped to the last word and found by the checks after the loop.
    auto decode = [&](uint32_t& st, int32_t idx, int64_t i) {
        const int32_t* c = cdf + idx * stride;
        const uint32_t slot = st & 0xffffu;
        int32_t s = lut[idx * (1 << kLutBits) + (slot >> kLutShift)];
        while (static_cast<uint32_t>(c[s + 1]) <= slot) ++s;
        const uint32_t start = static_cast<uint32_t>(c[s]);
        const uint32_t freq = static_cast<uint32_t>(c[s + 1]) - start;
        const uint32_t y = freq * (st >> kProbBits) + slot - start;
        const bool renorm = y < kLow;
        const uint32_t word = in[pos < last ? pos : last];
        st = renorm ? (y << 16) | word : y;
        pos += renorm;
        if (s == length[idx] - 2) {
            out[i] = static_cast<float>(e < n_esc ? esc[e] : 0);
            ++e;
        } else {
            out[i] = static_cast<float>(s + offset[idx]);
        }
    };
    for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
        const int64_t b1 = std::min(end, b0 + kBlock);
        int rc = rows_of(indexes, scales, Buckets{bk.bounds, bk.nb, bk.lut, nullptr, nullptr}, t.count, b0, b1, rows,
                         nullptr, &unused);
        for (; ov < n_ov && ov_pos[ov] < b1; ++ov) {  // the guard's rows
            if (static_cast<uint32_t>(ov_val[ov]) >= static_cast<uint64_t>(t.count)) rc = kBadIndex;
            rows[ov_pos[ov] - b0] = ov_val[ov];
        }
        if (rc != 0) return rc;
        int64_t i = b0;
        for (; i + 4 <= b1; i += 4) {
            decode(x[0], rows[i - b0], i);
            decode(x[1], rows[i + 1 - b0], i + 1);
            decode(x[2], rows[i + 2 - b0], i + 2);
            decode(x[3], rows[i + 3 - b0], i + 3);
        }
        for (; i < b1; ++i) {  // the part's last, incomplete group
            switch ((i - begin) & 3) {
                case 0: decode(x[0], rows[i - b0], i); break;
                case 1: decode(x[1], rows[i - b0], i); break;
                default: decode(x[2], rows[i - b0], i); break;
            }
        }
    }
    if (pos > n_words) return kEnded;
    if (e > n_esc) return kBadEscape;
    if (pos != n_words || e != n_esc) return kInconsistent;
    for (int l = 0; l < kLanes; ++l) {
        if (x[l] != kLow) return kInconsistent;
    }
    return 0;
}

// The first error of any part (lowest part index), else 0.
int first_error(const std::vector<int>& rc) {
    for (int r : rc) {
        if (r != 0) return r;
    }
    return 0;
}

// ------------------------------------------------------------------ format 2 (decoded only)

template <int LANES>
int decode_impl(const uint16_t* in, int64_t n_words, int64_t* pos_io, uint32_t* x, int64_t* coded_io,
                const int32_t* indexes, int64_t n, const Tables& t, const uint16_t* lut,
                const int32_t* escapes, int64_t n_escapes, int64_t* esc_io, int32_t* out) {
    int64_t pos = *pos_io;
    int64_t esc = *esc_io;
    const int64_t base = *coded_io;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t idx = indexes[i];
        if (idx < 0 || idx >= t.count) return kBadIndex;
        const int32_t* c = t.cdf + idx * t.stride;
        const int32_t tail = t.length[idx] - 2;
        uint32_t& st = x[(base + i) % LANES];
        const uint32_t slot = st & 0xffffu;
        int32_t s = lut[idx * (1 << kLutBits) + (slot >> kLutShift)];
        while (static_cast<uint32_t>(c[s + 1]) <= slot) ++s;
        const uint32_t start = static_cast<uint32_t>(c[s]);
        const uint32_t freq = static_cast<uint32_t>(c[s + 1]) - start;
        st = freq * (st >> kProbBits) + slot - start;
        if (st < kLow) {
            if (pos >= n_words) return kEnded;
            st = (st << 16) | in[pos++];
        }
        if (s == tail) {
            if (esc >= n_escapes) return kBadEscape;
            out[i] = escapes[esc++];
        } else {
            out[i] = s + t.offset[idx];
        }
    }
    *pos_io = pos;
    *esc_io = esc;
    *coded_io = base + n;
    return 0;
}

}  // namespace

extern "C" {

// For every table and every 2^12-wide slot bucket, the first symbol whose interval reaches into
// the bucket; decoding then scans forward from there. Tables must have been validated.
void hpcm_rans_build_lut(const int32_t* cdf, int64_t stride, const int32_t* length, int64_t count,
                         uint16_t* lut) {
    for (int64_t i = 0; i < count; ++i) {
        const int32_t* c = cdf + i * stride;
        const int32_t symbols = length[i] - 1;
        uint16_t* row = lut + i * (1 << kLutBits);
        int32_t s = 0;
        for (uint32_t b = 0; b < (1u << kLutBits); ++b) {
            const uint32_t slot = b << kLutShift;
            while (s < symbols - 1 && static_cast<uint32_t>(c[s + 1]) <= slot) ++s;
            row[b] = static_cast<uint16_t>(s);
        }
    }
}

// Per cell of positive float patterns (bits >> 17), the number of bounds strictly below the cell's
// smallest float; lut holds 1 << 14 entries. Bounds: nb strictly increasing, positive and finite
// ones (nb < 2^16), then +inf.
void hpcm_bucket_lut(const float* bounds, int32_t nb, uint16_t* lut) {
    int32_t below = 0;
    for (uint32_t cell = 0; cell < (1u << (31 - kBucketShift)); ++cell) {
        const uint32_t bits = cell << kBucketShift;
        float lowest;
        std::memcpy(&lowest, &bits, sizeof lowest);
        while (below < nb && bounds[below] < lowest) ++below;
        lut[cell] = static_cast<uint16_t>(below);
    }
}

// Bucket indexes of n scales (hpcm_encode_parts and hpcm_decode_parts find them on the way; format 2
// streams decode with these).
void hpcm_bucket_indexes(const float* scales, int64_t n, const float* bounds, int32_t nb, const uint16_t* lut,
                         int32_t* out) {
    int64_t unused = 0;
    rows_of(nullptr, scales, Buckets{bounds, nb, lut, nullptr, nullptr}, 0, 0, n, out, nullptr, &unused);
}

// Codes the symbols of one step into independent substreams, part j holding symbols
// [offsets[j], offsets[j + 1]), on up to `threads` threads. values: floats within +-2^30 (rounded
// by the codec; a fraction is cut off). Table rows come from `indexes` or, when it is null, from `scales` (bucket indexes; with
// near_low/near_high also the guard's candidates). Part j writes backwards into
// out[region[j], region[j + 1]) and reports its first word in first[j]; its escaped values go to
// esc[offsets[j]...] (esc_count[j] of them), its candidates to cand[offsets[j]...] (cand_count[j]).
// Returns 0, or the first part's error code.
int32_t hpcm_encode_parts(int32_t threads, int64_t parts, const int64_t* offsets, const float* values,
                          const int32_t* indexes, const float* scales, const float* bounds, int32_t nb,
                          const uint16_t* bucket_lut, const float* near_low, const float* near_high,
                          const int32_t* cdf, int64_t stride, const int32_t* length, const int32_t* offset,
                          int64_t count, uint16_t* out, const int64_t* region, int64_t* first, int32_t* esc,
                          int64_t* esc_count, int64_t* cand, int64_t* cand_count) {
    const Tables t{cdf, stride, length, offset, count};
    const Buckets bk{bounds, nb, bucket_lut, near_low, near_high};
    if (indexes == nullptr && nb >= count) return kBadIndex;  // a bucket without a table
    std::vector<int> rc(static_cast<size_t>(parts), 0);
    const std::function<void(int64_t)> part = [&](int64_t j) {
        int64_t word = 0;
        rc[j] = encode_part(values, indexes, scales, bk, offsets[j], offsets[j + 1],
                            t, out + region[j], region[j + 1] - region[j], &word, esc + offsets[j], &esc_count[j],
                            cand + offsets[j], &cand_count[j]);
        first[j] = region[j] + word;
    };
    parallel_for(parts, threads, part);
    return first_error(rc);
}

// Decodes the substreams of one step (part j: words[word_offsets[j], word_offsets[j + 1]), escaped
// values esc[esc_offsets[j], esc_offsets[j + 1]), symbols [offsets[j], offsets[j + 1])) into out
// (floats), on up to `threads` threads. Table rows come from
// `indexes` or from `scales`; the n_ov positions ov_pos (strictly increasing) take the rows ov_val
// instead (the boundary guard's). Returns 0, or the first part's error code.
int32_t hpcm_decode_parts(int32_t threads, int64_t parts, const int64_t* offsets, const uint16_t* words,
                          const int64_t* word_offsets, const int32_t* esc, const int64_t* esc_offsets,
                          const int32_t* indexes, const float* scales,
                          const float* bounds, int32_t nb, const uint16_t* bucket_lut, const int64_t* ov_pos,
                          const int32_t* ov_val, int64_t n_ov, const int32_t* cdf, int64_t stride,
                          const int32_t* length, const int32_t* offset, int64_t count, const uint16_t* lut,
                          float* out) {
    const Tables t{cdf, stride, length, offset, count};
    const Buckets bk{bounds, nb, bucket_lut, nullptr, nullptr};
    if (indexes == nullptr && nb >= count) return kBadIndex;  // a bucket without a table
    std::vector<int> rc(static_cast<size_t>(parts), 0);
    const std::function<void(int64_t)> part = [&](int64_t j) {
        const int64_t* lo = std::lower_bound(ov_pos, ov_pos + n_ov, offsets[j]);
        const int64_t* hi = std::lower_bound(lo, ov_pos + n_ov, offsets[j + 1]);
        rc[j] = decode_part(words + word_offsets[j], word_offsets[j + 1] - word_offsets[j], esc + esc_offsets[j],
                            esc_offsets[j + 1] - esc_offsets[j], indexes, scales, bk, offsets[j], offsets[j + 1], lo,
                            ov_val + (lo - ov_pos), hi - lo, t, lut, out);
    };
    parallel_for(parts, threads, part);
    return first_error(rc);
}

// Format 2: decodes n symbols continuing the state in (pos, x, coded, esc). Returns 0, -1 when the
// stream ends early, -2 on a bad index, -3 when the escape list is exhausted.
int32_t hpcm_rans_decode(int32_t lanes, const uint16_t* in, int64_t n_words, int64_t* pos, uint32_t* x,
                         int64_t* coded, const int32_t* indexes, int64_t n, const int32_t* cdf,
                         int64_t stride, const int32_t* length, const int32_t* offset, int64_t count,
                         const uint16_t* lut, const int32_t* escapes, int64_t n_escapes, int64_t* esc,
                         int32_t* out) {
    const Tables t{cdf, stride, length, offset, count};
    switch (lanes) {
        case 4: return decode_impl<4>(in, n_words, pos, x, coded, indexes, n, t, lut, escapes, n_escapes, esc, out);
        default: return -4;
    }
}

}  // extern "C"
