// rANS over 16-bit quantized CDF tables, driven by a table index per symbol, and the work around it
// for one coding step: scale buckets, the boundary guard's candidate screen, and independent
// substreams coded or decoded in parallel by an OpenMP team.
//
// Substreams (bitstream format 3; the pure-Python coder in rans.py writes and reads the same words):
//   * a step's symbols are cut into contiguous ranges (the offsets come from rans.py), each coded into
//     its own substream with one 32-bit state, so substreams code and decode in any order on any
//     number of threads: the thread count never changes a word. A thread codes up to kInterleave
//     substreams in one loop, so that their independent states keep the CPU busy while each waits
//     for its table lookups.
//   * state interval [2^16, 2^32), 16-bit renormalisation words, 16-bit probabilities.
//   * a substream is a sequence of uint16 words: the final encoder state (high word first), then the
//     renormalisation words in decoding order.
//   * a value outside its table's range is coded as the table's tail symbol (cdf_length - 2) and goes,
//     in coding order, to the substream's list of escaped values (stored by rans.py).
//   * the encoder starts at 2^16, so a decoder that used exactly the substream's words and escaped
//     values and ends at 2^16 has proof that it read the substream consistently.
// Format 2 streams (decoded only, hpcm_rans_decode): one stream for all symbols of an image with four
// interleaved states, symbol i using state i % 4, their final states first (state 0 first).
//
// Scale buckets: the index of a scale is the number of bounds (the scale table without its last entry)
// strictly below it, NaN and non-positive scales 0, as hpcm.models.cdf_tables.scale_indexes computes
// it. A lookup table over the top bits of the float's pattern (monotonic for positive floats) gives the
// bounds below the float's cell; comparisons with the bounds finish the count exactly.
//
// Everything is plain integer arithmetic and float comparisons, so the output does not depend on
// compiler or platform.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

namespace {

constexpr uint32_t kProbBits = 16;
constexpr uint32_t kLow = 1u << 16;
constexpr uint32_t kLutBits = 12;
constexpr uint32_t kLutShift = kProbBits - kLutBits;
constexpr int kInterleave = 4;  // substreams one thread codes in one loop
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
    double epsilon;          // the guard lists a flagged scale within this relative distance of a bound
};

// The bound nearest to a scale in relative distance |s / bound - 1|, in double (the boundary guard's
// rule, guard.py's `_nearest`): the upper one on a tie and for a scale that is not a number (whose
// distance is then not a number either, so that no comparison with it holds).
struct Nearest {
    int64_t index;
    double distance;
};

Nearest nearest_bound(double s, const float* bounds, int32_t nb) {
    const int64_t last = nb - 1;
    int64_t upper = std::isnan(s) ? nb : std::lower_bound(bounds, bounds + nb, s,
                                                          [](float b, double v) { return b < v; }) - bounds;
    upper = std::min(upper, last);
    const int64_t lower = std::max<int64_t>(upper - 1, 0);
    const double d_upper = std::fabs(s / static_cast<double>(bounds[upper]) - 1.0);
    const double d_lower = std::fabs(s / static_cast<double>(bounds[lower]) - 1.0);
    return d_lower < d_upper ? Nearest{lower, d_lower} : Nearest{upper, d_upper};
}

// ------------------------------------------------------------------ threads

// fn(i) for i in [0, count) on up to `threads` threads: an OpenMP team, built with -fopenmp (rans.py).
// In a process that runs PyTorch on the CPU this is PyTorch's own OpenMP runtime (the same
// libgomp.so.1), so a step's substreams are coded by the threads that have just run its networks and
// still spin-wait for work: a thread pool of our own would compete with them for the cores instead
// (measured: in-codec decoding 1.6x slower). Built without OpenMP, the loop runs on the calling thread.
// As with PyTorch's own operators, a process forked after a parallel region must not code in parallel.
void parallel_for(int64_t count, int threads, const std::function<void(int64_t)>& fn) {
    const int team = static_cast<int>(std::min<int64_t>(threads, count));
#pragma omp parallel for num_threads(team) schedule(dynamic, 1) if (team > 1)
    for (int64_t i = 0; i < count; ++i) fn(i);
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

// One substream being coded: its symbols [begin, begin + length), its state, where its words go.
struct Lane {
    int64_t begin = 0;
    int64_t length = 0;
    uint32_t x = kLow;          // encoding (decoding keeps its state in a DecodeState)
    uint16_t* words = nullptr;  // encoding: its region, written from the end; decoding: its words
    int64_t pos = 0;            // encoding: first word written
    int64_t n_words = 0;        // decoding: how many words it has
    int32_t* esc = nullptr;     // encoding: its escaped values (reversed at the end); decoding: to use
    int64_t n_esc = 0;          // encoding: how many; decoding: how many it has
    int64_t* cand = nullptr;    // encoding: the guard screen's candidates, kBlock apart per block, then
                                //           those the guard lists
    uint8_t* above = nullptr;   // encoding: per listed position, 1 where its scale lies above its bound
    std::vector<int64_t> block_cand;
    int32_t rows[kBlock];
};

// Codes K substreams interleaved, from their ends backwards.
template <int K>
int encode_lanes(Lane* lanes, const float* __restrict values, const int32_t* indexes, const float* scales,
                 const Buckets& bk, const Tables& t) {
    const bool screened = scales != nullptr && bk.near_low != nullptr;
    const int32_t* __restrict cdf = t.cdf;
    const int32_t* __restrict length = t.length;
    const int32_t* __restrict offset = t.offset;
    const int64_t stride = t.stride;
    const float limit = static_cast<float>(kMaxAbsValue);
    bool bad_value = false;
    int64_t longest = 0;
    for (int k = 0; k < K; ++k) longest = std::max(longest, lanes[k].length);
    const int64_t blocks = (longest + kBlock - 1) / kBlock;
    for (int64_t blk = blocks - 1; blk >= 0; --blk) {
        const int64_t o0 = blk * kBlock;
        const int64_t o1 = std::min(longest, o0 + kBlock);
        for (int k = 0; k < K; ++k) {
            Lane& lane = lanes[k];
            const int64_t e = std::min(o1, lane.length);
            int64_t nc = 0;
            if (e > o0) {
                const int rc = rows_of(indexes, scales, bk, t.count, lane.begin + o0, lane.begin + e, lane.rows,
                                       lane.cand + o0, &nc);
                if (rc != 0) return rc;
            }
            lane.block_cand.push_back(nc);
        }
        for (int64_t o = o1 - 1; o >= o0; --o) {
#pragma GCC unroll 4
            for (int k = 0; k < K; ++k) {
                Lane& lane = lanes[k];
                if (o >= lane.length) continue;
                const int64_t i = lane.begin + o;
                const int32_t idx = lane.rows[o - o0];
                const float v = values[i];
                const bool ok = v >= -limit && v <= limit;  // false for NaN
                bad_value |= !ok;
                const int32_t value = static_cast<int32_t>(ok ? v : 0.0f);
                const int32_t* c = cdf + idx * stride;
                const int32_t tail = length[idx] - 2;
                int32_t s = value - offset[idx];
                if (static_cast<uint32_t>(s) >= static_cast<uint32_t>(tail)) {
                    lane.esc[lane.n_esc++] = value;
                    s = tail;
                }
                const uint32_t start = static_cast<uint32_t>(c[s]);
                const uint32_t freq = static_cast<uint32_t>(c[s + 1]) - start;
                const uint32_t st = lane.x;
                const bool renorm = st >= (freq << 16);
                lane.words[lane.pos - 1] = static_cast<uint16_t>(st & 0xffffu);  // kept only on renorm
                lane.pos -= renorm;
                const uint32_t y = renorm ? st >> 16 : st;
                lane.x = ((y / freq) << kProbBits) + (y % freq) + start;
            }
        }
    }
    if (bad_value) return kBadValue;
    for (int k = 0; k < K; ++k) {
        Lane& lane = lanes[k];
        lane.words[--lane.pos] = static_cast<uint16_t>(lane.x & 0xffffu);
        lane.words[--lane.pos] = static_cast<uint16_t>(lane.x >> 16);
        std::reverse(lane.esc, lane.esc + lane.n_esc);
        // block b's candidates lie at cand[b * kBlock ...] (recorded from the last block): the guard's
        // rule settles each in double, and those it lists move together in position order
        int64_t listed = 0;
        const int64_t nb = static_cast<int64_t>(lane.block_cand.size());
        for (int64_t blk = 0; blk < nb && screened; ++blk) {
            const int64_t* cand = lane.cand + blk * kBlock;
            const int64_t count = lane.block_cand[nb - 1 - blk];
            for (int64_t c = 0; c < count; ++c) {
                const double s = scales[cand[c]];
                const Nearest n = nearest_bound(s, bk.bounds, bk.nb);
                if (!(n.distance < bk.epsilon)) continue;
                lane.above[listed] = static_cast<uint8_t>(s > static_cast<double>(bk.bounds[n.index]));
                lane.cand[listed++] = cand[c];  // never ahead of the candidate it copies
            }
        }
        lane.block_cand.assign(1, listed);
    }
    return 0;
}

// One decoder's state in registers: the state, its words and escaped values, and what it has used.
struct DecodeState {
    uint32_t x;
    const uint16_t* words;
    int64_t pos;
    int64_t last;  // index of its last word: reads past the end are clamped to it (found after the loop)
    const int32_t* esc;
    int64_t n_esc;
    int64_t used_esc;
};

// Decodes one symbol of table row idx from d into *out.
inline __attribute__((always_inline)) void decode_symbol(DecodeState& d, int32_t idx, const Tables& t,
                                                         const uint16_t* __restrict lut, float* out) {
    const int32_t* c = t.cdf + idx * t.stride;
    const uint32_t st = d.x;
    const uint32_t slot = st & 0xffffu;
    int32_t s = lut[idx * (1 << kLutBits) + (slot >> kLutShift)];
    while (static_cast<uint32_t>(c[s + 1]) <= slot) ++s;
    const uint32_t start = static_cast<uint32_t>(c[s]);
    const uint32_t freq = static_cast<uint32_t>(c[s + 1]) - start;
    const uint32_t y = freq * (st >> kProbBits) + slot - start;
    const bool renorm = y < kLow;
    const uint32_t word = d.words[d.pos < d.last ? d.pos : d.last];
    d.x = renorm ? (y << 16) | word : y;
    d.pos += renorm;
    if (__builtin_expect(s == t.length[idx] - 2, 0)) {
        *out = static_cast<float>(d.used_esc < d.n_esc ? d.esc[d.used_esc] : 0);
        ++d.used_esc;
    } else {
        *out = static_cast<float>(s + t.offset[idx]);
    }
}

// Decodes K substreams interleaved, their states in registers.
template <int K>
int decode_lanes(Lane* lanes, const int32_t* indexes, const float* scales, const Buckets& bk,
                 const int64_t* ov_pos, const int32_t* ov_val, int64_t n_ov, const Tables& t,
                 const uint16_t* __restrict lut, float* __restrict out) {
    const Buckets plain{bk.bounds, bk.nb, bk.lut, nullptr, nullptr};
    int64_t ov[K];
    DecodeState d[K];
    int64_t longest = 0;
    int64_t shortest = INT64_MAX;
    for (int k = 0; k < K; ++k) {
        Lane& lane = lanes[k];
        if (lane.n_words < 2) return kBadState;
        d[k] = DecodeState{(static_cast<uint32_t>(lane.words[0]) << 16) | lane.words[1], lane.words, 2,
                           lane.n_words - 1, lane.esc, lane.n_esc, 0};
        if (d[k].x < kLow) return kBadState;
        ov[k] = std::lower_bound(ov_pos, ov_pos + n_ov, lane.begin) - ov_pos;
        longest = std::max(longest, lane.length);
        shortest = std::min(shortest, lane.length);
    }
    for (int64_t o0 = 0; o0 < longest; o0 += kBlock) {
        const int64_t o1 = std::min(longest, o0 + kBlock);
        for (int k = 0; k < K; ++k) {
            Lane& lane = lanes[k];
            const int64_t b0 = lane.begin + o0;
            const int64_t b1 = lane.begin + std::min(o1, lane.length);
            if (b1 <= b0) continue;
            int64_t unused = 0;
            int rc = rows_of(indexes, scales, plain, t.count, b0, b1, lane.rows, nullptr, &unused);
            for (; ov[k] < n_ov && ov_pos[ov[k]] < b1; ++ov[k]) {  // the guard's rows
                const int32_t row = ov_val[ov[k]];
                if (static_cast<uint32_t>(row) >= static_cast<uint64_t>(t.count)) rc = kBadIndex;
                lane.rows[ov_pos[ov[k]] - b0] = row;
            }
            if (rc != 0) return rc;
        }
        // every lane has symbols up to `common`: no length checks there
        const int64_t common = std::max(o0, std::min(o1, shortest));
        for (int64_t o = o0; o < common; ++o) {
#pragma GCC unroll 4
            for (int k = 0; k < K; ++k) decode_symbol(d[k], lanes[k].rows[o - o0], t, lut, out + lanes[k].begin + o);
        }
        for (int64_t o = common; o < o1; ++o) {
            for (int k = 0; k < K; ++k) {
                if (o < lanes[k].length) decode_symbol(d[k], lanes[k].rows[o - o0], t, lut, out + lanes[k].begin + o);
            }
        }
    }
    for (int k = 0; k < K; ++k) {
        if (d[k].pos > d[k].last + 1) return kEnded;
        if (d[k].used_esc > d[k].n_esc) return kBadEscape;
        if (d[k].pos != d[k].last + 1 || d[k].used_esc != d[k].n_esc || d[k].x != kLow) return kInconsistent;
    }
    return 0;
}

// Lanes for the k substreams from j0 on (part j: symbols [offsets[j], offsets[j + 1])), each then
// given its buffers by place(lane, j).
template <class Place>
std::unique_ptr<Lane[]> lanes_at(const int64_t* offsets, int64_t j0, int k, Place place) {
    std::unique_ptr<Lane[]> lanes(new Lane[k]);
    for (int l = 0; l < k; ++l) {
        lanes[l].begin = offsets[j0 + l];
        lanes[l].length = offsets[j0 + l + 1] - offsets[j0 + l];
        place(lanes[l], j0 + l);
    }
    return lanes;
}

// Runs fn(first, count) over the substreams [0, parts) in runs of at most kInterleave interleaved,
// the runs split between up to `threads` threads; returns the first error of any run.
int over_lanes(int64_t parts, int threads, const std::function<int(int64_t, int)>& fn) {
    const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(threads, parts));
    std::vector<int> rc(static_cast<size_t>(tasks), 0);
    const std::function<void(int64_t)> task = [&](int64_t j) {
        const int64_t first = j * parts / tasks;
        const int64_t end = (j + 1) * parts / tasks;
        for (int64_t k = first; k < end && rc[j] == 0; k += kInterleave) {
            rc[j] = fn(k, static_cast<int>(std::min<int64_t>(kInterleave, end - k)));
        }
    };
    parallel_for(tasks, threads, task);
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

// The boundary guard's rows of listed positions from the decoder's own scales: the nearest bound,
// plus one where the encoder's scale lay above it.
std::vector<int32_t> guard_rows(const float* scales, const Buckets& bk, const int64_t* ov_pos,
                                const uint8_t* above, int64_t n_ov) {
    std::vector<int32_t> rows(static_cast<size_t>(n_ov));
    for (int64_t k = 0; k < n_ov; ++k) {
        const int64_t nearest = nearest_bound(scales[ov_pos[k]], bk.bounds, bk.nb).index;
        rows[static_cast<size_t>(k)] = static_cast<int32_t>(nearest + (above[k] != 0));
    }
    return rows;
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
// by the codec; a fraction is cut off). Table rows come from `indexes` or, when it is null, from
// `scales` (bucket indexes; with near_low/near_high also the boundary guard's listing: the scales the
// windows flag, settled by the guard's rule with `epsilon`). Part j writes backwards into
// out[region[j], region[j + 1]) (at least its symbols + 2 words) and reports its first word in
// first[j]; its escaped values go to esc[offsets[j]...] (esc_count[j] of them), its listed positions
// to cand[offsets[j]...] and their above-the-bound bits to above[offsets[j]...] (cand_count[j] of
// them). Returns 0, or an error code.
int32_t hpcm_encode_parts(int32_t threads, int64_t parts, const int64_t* offsets, const float* values,
                          const int32_t* indexes, const float* scales, const float* bounds, int32_t nb,
                          const uint16_t* bucket_lut, const float* near_low, const float* near_high,
                          double epsilon, const int32_t* cdf, int64_t stride, const int32_t* length,
                          const int32_t* offset, int64_t count, uint16_t* out, const int64_t* region,
                          int64_t* first, int32_t* esc, int64_t* esc_count, int64_t* cand, uint8_t* above,
                          int64_t* cand_count) {
    const Tables t{cdf, stride, length, offset, count};
    const Buckets bk{bounds, nb, bucket_lut, near_low, near_high, epsilon};
    if (indexes == nullptr && nb >= count) return kBadIndex;  // a bucket without a table
    return over_lanes(parts, threads, [&](int64_t j0, int k) {
        std::unique_ptr<Lane[]> lanes = lanes_at(offsets, j0, k, [&](Lane& lane, int64_t j) {
            lane.words = out + region[j];
            lane.pos = region[j + 1] - region[j];
            lane.esc = esc + offsets[j];
            lane.cand = cand + offsets[j];
            lane.above = above + offsets[j];
        });
        int rc = 0;
        switch (k) {
            case 1: rc = encode_lanes<1>(lanes.get(), values, indexes, scales, bk, t); break;
            case 2: rc = encode_lanes<2>(lanes.get(), values, indexes, scales, bk, t); break;
            case 3: rc = encode_lanes<3>(lanes.get(), values, indexes, scales, bk, t); break;
            default: rc = encode_lanes<4>(lanes.get(), values, indexes, scales, bk, t); break;
        }
        for (int l = 0; l < k && rc == 0; ++l) {
            const int64_t j = j0 + l;
            first[j] = region[j] + lanes[l].pos;
            esc_count[j] = lanes[l].n_esc;
            cand_count[j] = lanes[l].block_cand[0];
        }
        return rc;
    });
}

// Decodes the substreams of one step (part j: words[word_offsets[j], word_offsets[j + 1]), escaped
// values esc[esc_offsets[j], esc_offsets[j + 1]), symbols [offsets[j], offsets[j + 1])) into out
// (floats), on up to `threads` threads. Table rows come from `indexes` or from `scales`; the n_ov
// positions ov_pos (strictly increasing) take the boundary guard's rows instead: ov_val, or with
// scales and ov_above (one byte per position, 1 = the encoder's scale lay above its bound) the rows
// guard_rows finds. Returns 0, or an error code.
int32_t hpcm_decode_parts(int32_t threads, int64_t parts, const int64_t* offsets, const uint16_t* words,
                          const int64_t* word_offsets, const int32_t* esc, const int64_t* esc_offsets,
                          const int32_t* indexes, const float* scales, const float* bounds, int32_t nb,
                          const uint16_t* bucket_lut, const int64_t* ov_pos, const int32_t* ov_val,
                          const uint8_t* ov_above, int64_t n_ov, const int32_t* cdf, int64_t stride,
                          const int32_t* length, const int32_t* offset, int64_t count, const uint16_t* lut,
                          float* out) {
    const Tables t{cdf, stride, length, offset, count};
    const Buckets bk{bounds, nb, bucket_lut, nullptr, nullptr};
    if (indexes == nullptr && nb >= count) return kBadIndex;  // a bucket without a table
    std::vector<int32_t> found;
    if (ov_val == nullptr && n_ov > 0) {
        if (scales == nullptr || ov_above == nullptr || nb < 1) return kBadIndex;
        for (int64_t k = 0; k < n_ov; ++k) {
            if (ov_pos[k] < 0 || ov_pos[k] >= offsets[parts]) return kBadIndex;
        }
        found = guard_rows(scales, bk, ov_pos, ov_above, n_ov);
        ov_val = found.data();
    }
    return over_lanes(parts, threads, [&](int64_t j0, int k) {
        std::unique_ptr<Lane[]> lanes = lanes_at(offsets, j0, k, [&](Lane& lane, int64_t j) {
            lane.words = const_cast<uint16_t*>(words + word_offsets[j]);
            lane.n_words = word_offsets[j + 1] - word_offsets[j];
            lane.esc = const_cast<int32_t*>(esc + esc_offsets[j]);
            lane.n_esc = esc_offsets[j + 1] - esc_offsets[j];
        });
        switch (k) {
            case 1: return decode_lanes<1>(lanes.get(), indexes, scales, bk, ov_pos, ov_val, n_ov, t, lut, out);
            case 2: return decode_lanes<2>(lanes.get(), indexes, scales, bk, ov_pos, ov_val, n_ov, t, lut, out);
            case 3: return decode_lanes<3>(lanes.get(), indexes, scales, bk, ov_pos, ov_val, n_ov, t, lut, out);
            default: return decode_lanes<4>(lanes.get(), indexes, scales, bk, ov_pos, ov_val, n_ov, t, lut, out);
        }
    });
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
