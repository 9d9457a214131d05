// Interleaved rANS over 16-bit quantized CDF tables, driven by a table index per symbol.
//
// Format (shared with the pure-Python reference in rans.py, which must stay bit-identical):
//   * LANES independent 32-bit states; symbol i (in coding order) uses state i % LANES.
//   * state interval [2^16, 2^32), 16-bit renormalisation words, 16-bit probabilities, so a symbol
//     emits or reads at most one word.
//   * the stream is a sequence of little-endian uint16 words; it starts with the final encoder states
//     (lane 0 first, high word first) followed by the renormalisation words in decoding order.
//   * the encoder starts every lane at 2^16, so a decoder that consumed the whole stream and ends with
//     every lane at 2^16 has proof that the stream was read consistently.
//   * a value whose residual symbol falls outside a table's range is coded as that table's tail
//     symbol (cdf_length - 2) and its value goes, in coding order, to a separate escape list.
//
// Everything is plain integer arithmetic, so the output does not depend on compiler or platform.

#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>

namespace {

constexpr uint32_t kProbBits = 16;
constexpr uint32_t kLow = 1u << 16;
constexpr uint32_t kLutBits = 12;
constexpr uint32_t kLutShift = kProbBits - kLutBits;

struct Tables {
    const int32_t* cdf;
    int64_t stride;
    const int32_t* length;
    const int32_t* offset;
    int64_t count;
};

template <int LANES>
int64_t encode_impl(const int32_t* values, const int32_t* indexes, int64_t n, const Tables& t,
                    uint16_t* out, int64_t out_cap, int32_t* escapes, int64_t* n_escapes) {
    uint32_t x[LANES];
    for (int l = 0; l < LANES; ++l) x[l] = kLow;
    // Words are produced in reverse decoding order, written from the end of `out` backwards.
    int64_t pos = out_cap;
    int64_t esc = 0;
    for (int64_t i = n - 1; i >= 0; --i) {
        const int32_t idx = indexes[i];
        if (idx < 0 || idx >= t.count) return -2;
        const int32_t* c = t.cdf + idx * t.stride;
        const int32_t tail = t.length[idx] - 2;
        int32_t s = values[i] - t.offset[idx];
        if (static_cast<uint32_t>(s) >= static_cast<uint32_t>(tail)) {
            escapes[esc++] = values[i];
            s = tail;
        }
        const uint32_t start = static_cast<uint32_t>(c[s]);
        const uint32_t freq = static_cast<uint32_t>(c[s + 1]) - start;
        uint32_t& st = x[i % LANES];
        if (st >= (freq << 16)) {
            if (pos <= 0) return -1;
            out[--pos] = static_cast<uint16_t>(st & 0xffffu);
            st >>= 16;
        }
        st = ((st / freq) << kProbBits) + (st % freq) + start;
    }
    if (pos < 2 * LANES) return -1;
    for (int l = LANES - 1; l >= 0; --l) {
        out[--pos] = static_cast<uint16_t>(x[l] & 0xffffu);
        out[--pos] = static_cast<uint16_t>(x[l] >> 16);
    }
    // Escapes were collected in reverse coding order.
    std::reverse(escapes, escapes + esc);
    *n_escapes = esc;
    const int64_t used = out_cap - pos;
    std::memmove(out, out + pos, static_cast<size_t>(used) * sizeof(uint16_t));
    return used;
}

template <int LANES>
int decode_impl(const uint16_t* in, int64_t n_words, int64_t* pos_io, uint32_t* x, int64_t* coded_io,
                const int32_t* indexes, int64_t n, const Tables& t, const uint16_t* lut,
                const int32_t* escapes, int64_t n_escapes, int64_t* esc_io, int32_t* out) {
    int64_t pos = *pos_io;
    int64_t esc = *esc_io;
    const int64_t base = *coded_io;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t idx = indexes[i];
        if (idx < 0 || idx >= t.count) return -2;
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
            if (pos >= n_words) return -1;
            st = (st << 16) | in[pos++];
        }
        if (s == tail) {
            if (esc >= n_escapes) return -3;
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

// Returns the number of words written to out[0..], -1 when out_cap is too small, -2 on a bad index.
int64_t hpcm_rans_encode(int32_t lanes, const int32_t* values, const int32_t* indexes, int64_t n,
                         const int32_t* cdf, int64_t stride, const int32_t* length, const int32_t* offset,
                         int64_t count, uint16_t* out, int64_t out_cap, int32_t* escapes,
                         int64_t* n_escapes) {
    const Tables t{cdf, stride, length, offset, count};
    switch (lanes) {
        case 1: return encode_impl<1>(values, indexes, n, t, out, out_cap, escapes, n_escapes);
        case 2: return encode_impl<2>(values, indexes, n, t, out, out_cap, escapes, n_escapes);
        case 4: return encode_impl<4>(values, indexes, n, t, out, out_cap, escapes, n_escapes);
        case 8: return encode_impl<8>(values, indexes, n, t, out, out_cap, escapes, n_escapes);
        case 16: return encode_impl<16>(values, indexes, n, t, out, out_cap, escapes, n_escapes);
        default: return -4;
    }
}

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

// Decodes n symbols continuing the state in (pos, x, coded, esc). Returns 0, -1 when the stream
// ends early, -2 on a bad index, -3 when the escape list is exhausted.
int32_t hpcm_rans_decode(int32_t lanes, const uint16_t* in, int64_t n_words, int64_t* pos, uint32_t* x,
                         int64_t* coded, const int32_t* indexes, int64_t n, const int32_t* cdf,
                         int64_t stride, const int32_t* length, const int32_t* offset, int64_t count,
                         const uint16_t* lut, const int32_t* escapes, int64_t n_escapes, int64_t* esc,
                         int32_t* out) {
    const Tables t{cdf, stride, length, offset, count};
    switch (lanes) {
        case 1: return decode_impl<1>(in, n_words, pos, x, coded, indexes, n, t, lut, escapes, n_escapes, esc, out);
        case 2: return decode_impl<2>(in, n_words, pos, x, coded, indexes, n, t, lut, escapes, n_escapes, esc, out);
        case 4: return decode_impl<4>(in, n_words, pos, x, coded, indexes, n, t, lut, escapes, n_escapes, esc, out);
        case 8: return decode_impl<8>(in, n_words, pos, x, coded, indexes, n, t, lut, escapes, n_escapes, esc, out);
        case 16: return decode_impl<16>(in, n_words, pos, x, coded, indexes, n, t, lut, escapes, n_escapes, esc, out);
        default: return -4;
    }
}

}  // extern "C"
