// Few-row products that read K2's weight formats as stored: fp32, bf16, block FP8 (e4m3 + float32 scale per
// 128x128 block) and INT4 group-32 (compressed-tensors pack-quantized: int32 words of 8 nibbles, bf16 scale per
// 32 inputs). out[m, o] (+)= alpha * sum_i x[m, i] * W[o, i], x and out float32.
//
// The weight is decoded in registers (never dequantized to memory). FP8: each 128-input block's partial sum is
// multiplied by its scale once, y = sum_b scale_b * sum_{i in b} q_i x_i; INT4: each decoded value is scaled
// (exactly) before its product. kimi_k2/kernels/reference.py has the same sums in torch; tests/test_kernels.py
// checks that they agree to float32 rounding (only the order of the additions differs).
//
// Decoding, per 8 inputs (AVX2 + FMA + F16C):
//   bf16  widen u16 -> u32, shift left 16: the float32 with the same top bits (exact).
//   fp8   16 at a time: e4m3fn byte s.eeee.mmm -> the fp16 bits s.0eeee.mmm0000000, then F16C to float32: the
//         value divided by 2^8 (fp16's exponent bias is 15, e4m3's 7), subnormals included; the 2^8 is folded
//         into the block scale, so the decoded product is exact.
//   int4  a group of 32 at a time: each nibble u becomes the fp16 1024 + u, converted by F16C, then one fused
//         multiply-subtract gives (u - 8) * scale exactly; the group's scale is applied there, not at the end.
// Threads split the output rows (at::parallel_for, so torch.set_num_threads applies); rows of x are taken four
// at a time so a decoded weight vector serves up to four rows.
//
// Pointers come as integers: a weight is (data, scale) addresses into tensors the Python side keeps alive
// (possibly views into memory-mapped safetensors files), which lets an expert bank be a table of addresses
// instead of a stacked copy.

#ifndef K2_STANDALONE  // K2_STANDALONE: the kernels alone, for a C++ microbenchmark without torch
#include <torch/extension.h>
#include <ATen/Parallel.h>
#else
#include <stdexcept>
#define TORCH_CHECK(cond, ...) \
  if (!(cond)) throw std::runtime_error("kimi_k2 kernels: check failed")
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define K2_AVX2 1
#else
#define K2_AVX2 0
#endif

namespace {

enum Format : int64_t { F32 = 0, BF16 = 1, FP8 = 2, INT4 = 3 };

struct Weight {
  int64_t fmt;
  const uint8_t* data;  // rows of I values in the format's storage
  const uint8_t* scale; // fp8: float32 [ceil(O/block_rows), scale_ld]; int4: bf16 [O, scale_ld]; else null
  int64_t rows, cols;   // O, I
  int64_t block_rows;   // rows sharing one scale row (fp8: 128; int4: 1)
  int64_t block_cols;   // inputs sharing one scale (fp8: 128; int4: group size); dense: cols
  int64_t scale_ld;     // scale values per scale row
};

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float fp8_table[256];

void init_fp8_table() {
  for (int b = 0; b < 256; ++b) {
    const int sign = b >> 7, exponent = (b >> 3) & 0xF, mantissa = b & 0x7;
    float value;
    if (exponent == 0xF && mantissa == 0x7) {
      value = NAN;  // e4m3fn has no infinities; 0x7F / 0xFF are NaN
    } else if (exponent == 0) {
      value = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: m/8 * 2^-6
    } else {
      value = std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
    }
    fp8_table[b] = sign ? -value : value;
  }
}

inline int64_t row_bytes(const Weight& w) {
  switch (w.fmt) {
    case F32: return w.cols * 4;
    case BF16: return w.cols * 2;
    case FP8: return w.cols;
    default: return ((w.cols + 7) / 8) * 4;
  }
}

// One stored value, decoded (true value; the vector fp8 decoder returns value / 256 instead).
inline float scalar_value(const Weight& w, const uint8_t* row, int64_t i) {
  switch (w.fmt) {
    case F32: return reinterpret_cast<const float*>(row)[i];
    case BF16: return bf16_to_float(reinterpret_cast<const uint16_t*>(row)[i]);
    case FP8: return fp8_table[row[i]];
    default: {
      const uint32_t word = reinterpret_cast<const uint32_t*>(row)[i >> 3];
      return static_cast<float>(static_cast<int>((word >> (4 * (i & 7))) & 0xF) - 8);
    }
  }
}

// Scale of row o, block b (1 for dense formats).
inline float block_scale(const Weight& w, int64_t o, int64_t b) {
  if (w.fmt == FP8) return reinterpret_cast<const float*>(w.scale)[(o / w.block_rows) * w.scale_ld + b];
  if (w.fmt == INT4) return bf16_to_float(reinterpret_cast<const uint16_t*>(w.scale)[o * w.scale_ld + b]);
  return 1.0f;
}

// x quantized per group of 32 inputs to int8 (int8_activations mode): q [rows, ldq] in each group's even-then-odd
// input order, d [rows, ldd] one float scale per group (amax / 127). Only whole groups; a last partial group of
// a row stays float.
struct Q8Rows {
  const int8_t* q;
  const float* d;
  int64_t ldq, ldd;
};

struct Q8Buffer {
  std::vector<int8_t> q;
  std::vector<float> d;
  int64_t ldq = 0, ldd = 0;
  Q8Rows view() const { return {q.data(), d.data(), ldq, ldd}; }
};

Q8Buffer quantize_q8(const float* x, int64_t ldx, int64_t m_rows, int64_t cols) {
  Q8Buffer b;
  b.ldd = cols / 32;
  b.ldq = b.ldd * 32;
  b.q.resize(m_rows * b.ldq);
  b.d.resize(m_rows * b.ldd);
  for (int64_t m = 0; m < m_rows; ++m)
    for (int64_t g = 0; g < b.ldd; ++g) {
      const float* xg = x + m * ldx + g * 32;
      float amax = 0.0f;
      for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(xg[k]));
      const float d = amax / 127.0f, inverse = d > 0.0f ? 1.0f / d : 0.0f;
      b.d[m * b.ldd + g] = d;
      int8_t* qg = b.q.data() + m * b.ldq + g * 32;
      for (int k = 0; k < 16; ++k) {  // position k: input 2k; position 16 + k: input 2k + 1
        qg[k] = static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, std::nearbyint(xg[2 * k] * inverse))));
        qg[16 + k] = static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, std::nearbyint(xg[2 * k + 1] * inverse))));
      }
    }
  return b;
}

#if K2_AVX2
// Eight stored values starting at input i (a multiple of 8), as float32: fp32 and bf16 (exact).
template <int64_t FMT>
inline __m256 decode8(const uint8_t* row, int64_t i) {
  if constexpr (FMT == F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i);
  } else {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  }
}

// Sixteen fp8 values starting at input i, divided by 2^8 (exact): byte b -> u16 b << 7 puts the sign at bit 14 and
// exponent.mantissa at bits 13..7; adding bit 14 to itself moves the sign to bit 15: the fp16 s.0eeee.mmm0000000.
inline void decode16_fp8(const uint8_t* row, int64_t i, __m256& low, __m256& high) {
  __m256i h = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i))), 7);
  h = _mm256_add_epi16(h, _mm256_and_si256(h, _mm256_set1_epi16(0x4000)));
  low = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  high = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

// One INT4 group of 32 inputs (16 bytes: byte j holds input 2j in its low nibble, 2j+1 in its high one), scaled:
// v[k] = inputs 8k..8k+7 times `scale`. A nibble u becomes the fp16 1024 + u (bits 0x6400 | u), and
// (1024 + u) * scale - 1032 * scale = (u - 8) * scale is exact in one fused multiply-subtract (the operands need
// 19 and 16 significant bits).
inline void decode32_int4(const uint8_t* bytes, float scale, __m256 v[4]) {
  const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
  const __m256i bias = _mm256_set1_epi16(0x6400);
  const __m256i lo = _mm256_or_si256(_mm256_and_si256(w, _mm256_set1_epi16(0xF)), bias);
  const __m256i hi = _mm256_or_si256(_mm256_srli_epi16(w, 4), bias);
  const __m256i p = _mm256_unpacklo_epi16(lo, hi);  // inputs [0..7 | 16..23]
  const __m256i q = _mm256_unpackhi_epi16(lo, hi);  // inputs [8..15 | 24..31]
  const __m256 s = _mm256_set1_ps(scale), offset = _mm256_set1_ps(1032.0f * scale);
  v[0] = _mm256_fmsub_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(p)), s, offset);
  v[1] = _mm256_fmsub_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(q)), s, offset);
  v[2] = _mm256_fmsub_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(p, 1)), s, offset);
  v[3] = _mm256_fmsub_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(q, 1)), s, offset);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline void store_rows(int mb, const __m256* acc, const float* tail, float* out, int64_t ldo, int64_t o, float alpha,
                       bool accumulate) {
  for (int m = 0; m < mb; ++m) {
    const float y = alpha * (hsum(acc[m]) + tail[m]);
    float& dst = out[m * ldo + o];
    dst = accumulate ? dst + y : y;
  }
}

// total[m] = the sum of row m's U accumulator chains; tail[m] = 0 (for the scalar inputs that follow).
template <int MB, int U>
inline void sum_chains(const __m256 (&acc)[MB][U], __m256* total, float* tail) {
  for (int m = 0; m < MB; ++m) {
    total[m] = acc[m][0];
    for (int u = 1; u < U; ++u) total[m] = _mm256_add_ps(total[m], acc[m][u]);
    tail[m] = 0.0f;
  }
}

// Rows [o0, o1) of an fp32 / bf16 W against MB rows of x; U independent FMA chains per row of x.
template <int64_t FMT, int MB>
void rows_dense(const Weight& w, const float* x, int64_t ldx, float* out, int64_t ldo, int64_t o0, int64_t o1,
                float alpha, bool accumulate) {
  constexpr int U = MB == 1 ? 4 : 2;
  const int64_t stride = row_bytes(w), cols = w.cols;
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = w.data + o * stride;
    __m256 acc[MB][U];
    for (int m = 0; m < MB; ++m)
      for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 * U <= cols; i += 8 * U) {
      __m256 wv[U];
      for (int u = 0; u < U; ++u) wv[u] = decode8<FMT>(row, i + 8 * u);
      for (int m = 0; m < MB; ++m)
        for (int u = 0; u < U; ++u) acc[m][u] = _mm256_fmadd_ps(wv[u], _mm256_loadu_ps(x + m * ldx + i + 8 * u), acc[m][u]);
    }
    for (; i + 8 <= cols; i += 8) {
      const __m256 wv = decode8<FMT>(row, i);
      for (int m = 0; m < MB; ++m) acc[m][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + i), acc[m][0]);
    }
    __m256 total[MB];
    float tail[MB];
    sum_chains<MB, U>(acc, total, tail);
    for (; i < cols; ++i) {
      const float v = scalar_value(w, row, i);
      for (int m = 0; m < MB; ++m) tail[m] += v * x[m * ldx + i];
    }
    store_rows(MB, total, tail, out, ldo, o, alpha, accumulate);
  }
}

// Rows [o0, o1) of a block-FP8 W: each 128-input block's partial sums times its scale (x 2^8, see decode16_fp8).
template <int MB>
void rows_fp8(const Weight& w, const float* x, int64_t ldx, float* out, int64_t ldo, int64_t o0, int64_t o1,
              float alpha, bool accumulate) {
  constexpr int U = MB == 1 ? 4 : 2;  // chains; a step decodes 16 inputs into two vectors
  const int64_t cols = w.cols, span = w.block_cols;
  const float* scales = reinterpret_cast<const float*>(w.scale);
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = w.data + o * cols;
    const float* row_scales = scales + (o / w.block_rows) * w.scale_ld;
    __m256 total[MB];
    float tail[MB];
    for (int m = 0; m < MB; ++m) total[m] = _mm256_setzero_ps(), tail[m] = 0.0f;
    for (int64_t b = 0, s0 = 0; s0 < cols; ++b, s0 += span) {
      const int64_t s1 = std::min(cols, s0 + span);
      __m256 acc[MB][U];
      for (int m = 0; m < MB; ++m)
        for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
      int64_t i = s0;
      for (; i + 8 * U <= s1; i += 8 * U) {
        __m256 wv[U];
        for (int u = 0; u < U; u += 2) decode16_fp8(row, i + 8 * u, wv[u], wv[u + 1]);
        for (int m = 0; m < MB; ++m)
          for (int u = 0; u < U; ++u) acc[m][u] = _mm256_fmadd_ps(wv[u], _mm256_loadu_ps(x + m * ldx + i + 8 * u), acc[m][u]);
      }
      for (; i + 16 <= s1; i += 16) {
        __m256 lo, hi;
        decode16_fp8(row, i, lo, hi);
        for (int m = 0; m < MB; ++m) {
          acc[m][0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + m * ldx + i), acc[m][0]);
          acc[m][1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + m * ldx + i + 8), acc[m][1]);
        }
      }
      const float scale = row_scales[b];
      const __m256 sv = _mm256_set1_ps(scale * 256.0f);
      for (int m = 0; m < MB; ++m) {
        __m256 sum = acc[m][0];
        for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[m][u]);
        total[m] = _mm256_fmadd_ps(sum, sv, total[m]);
      }
      for (; i < s1; ++i) {  // inputs past the last full 16 of a block (odd shapes only)
        const float v = fp8_table[row[i]] * scale;
        for (int m = 0; m < MB; ++m) tail[m] += v * x[m * ldx + i];
      }
    }
    store_rows(MB, total, tail, out, ldo, o, alpha, accumulate);
  }
}

// Rows [o0, o1) of an INT4 W, group by group (decode32_int4 applies each group's scale).
template <int MB>
void rows_int4(const Weight& w, const float* x, int64_t ldx, float* out, int64_t ldo, int64_t o0, int64_t o1,
               float alpha, bool accumulate) {
  constexpr int U = MB == 1 ? 4 : 2;
  const int64_t cols = w.cols, stride = row_bytes(w), group = w.block_cols;
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(w.scale);
  const bool vector_groups = group == 32;
  const int64_t full = vector_groups ? cols / 32 * 32 : 0;  // inputs covered by whole groups of 32
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = w.data + o * stride;
    const uint16_t* row_scales = scales + o * w.scale_ld;
    __m256 acc[MB][U];
    for (int m = 0; m < MB; ++m)
      for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
    for (int64_t i = 0; i < full; i += 32) {
      __m256 v[4];
      decode32_int4(row + i / 2, bf16_to_float(row_scales[i / 32]), v);
      for (int m = 0; m < MB; ++m)
        for (int k = 0; k < 4; ++k) acc[m][k % U] = _mm256_fmadd_ps(v[k], _mm256_loadu_ps(x + m * ldx + i + 8 * k), acc[m][k % U]);
    }
    __m256 total[MB];
    float tail[MB];
    sum_chains<MB, U>(acc, total, tail);
    for (int64_t i = full; i < cols; ++i) {  // a last partial group (or groups other than 32)
      const float v = scalar_value(w, row, i) * bf16_to_float(row_scales[i / group]);
      for (int m = 0; m < MB; ++m) tail[m] += v * x[m * ldx + i];
    }
    store_rows(MB, total, tail, out, ldo, o, alpha, accumulate);
  }
}

// INT4 weights against int8 activations (the documented `int8_activations` mode, llama.cpp's Q4_0 x Q8_0 idea):
// each group of 32 inputs of x was quantized to int8 with its own scale d (see quantize_q8), stored with the
// group's even inputs first, then its odd ones — the order in which a group's 16 bytes give up their low and high
// nibbles. A group's dot product is exact in integers: maddubs(|w|, sign(q, w)) pairs, then pairs of pairs; one
// float multiply-add applies weight scale x activation scale.
template <int MB>
void rows_int4_q8(const Weight& w, const Q8Rows& q8, const float* x, int64_t ldx, float* out, int64_t ldo, int64_t o0,
                  int64_t o1, float alpha, bool accumulate) {
  const int64_t cols = w.cols, stride = row_bytes(w), full = cols / 32 * 32;
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(w.scale);
  const __m128i low4 = _mm_set1_epi8(0x0F);
  const __m256i eight = _mm256_set1_epi8(8);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = w.data + o * stride;
    const uint16_t* row_scales = scales + o * w.scale_ld;
    __m256 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t i = 0, g = 0; i < full; i += 32, ++g) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i / 2));
      const __m128i lo = _mm_and_si128(bytes, low4), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
      const __m256i wq = _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight);  // [even | odd] inputs, in [-8, 7]
      const __m256i wabs = _mm256_sign_epi8(wq, wq);
      const float ws = bf16_to_float(row_scales[g]);
      for (int m = 0; m < MB; ++m) {
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8.q + m * q8.ldq + i));
        const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xq, wq)), ones);
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(ws * q8.d[m * q8.ldd + g]), acc[m]);
      }
    }
    float tail[MB];
    for (int m = 0; m < MB; ++m) tail[m] = 0.0f;
    for (int64_t i = full; i < cols; ++i) {  // a last partial group: float activations
      const float v = scalar_value(w, row, i) * bf16_to_float(row_scales[i / 32]);
      for (int m = 0; m < MB; ++m) tail[m] += v * x[m * ldx + i];
    }
    store_rows(MB, acc, tail, out, ldo, o, alpha, accumulate);
  }
}

template <int MB>
void rows_simd(const Weight& w, const float* x, int64_t ldx, float* out, int64_t ldo, int64_t o0, int64_t o1,
               float alpha, bool accumulate) {
  switch (w.fmt) {
    case F32: return rows_dense<F32, MB>(w, x, ldx, out, ldo, o0, o1, alpha, accumulate);
    case BF16: return rows_dense<BF16, MB>(w, x, ldx, out, ldo, o0, o1, alpha, accumulate);
    case FP8: return rows_fp8<MB>(w, x, ldx, out, ldo, o0, o1, alpha, accumulate);
    default: return rows_int4<MB>(w, x, ldx, out, ldo, o0, o1, alpha, accumulate);
  }
}
#endif

// The same arithmetic one value at a time: for CPUs without AVX2/FMA/F16C.
void rows_scalar(const Weight& w, const float* x, int64_t ldx, int mb, float* out, int64_t ldo, int64_t o0,
                 int64_t o1, float alpha, bool accumulate) {
  const int64_t stride = row_bytes(w);
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = w.data + o * stride;
    for (int m = 0; m < mb; ++m) {
      float total = 0.0f;
      for (int64_t b = 0, s0 = 0; s0 < w.cols; ++b, s0 += w.block_cols) {
        float sum = 0.0f;
        for (int64_t i = s0; i < std::min(w.cols, s0 + w.block_cols); ++i) sum += scalar_value(w, row, i) * x[m * ldx + i];
        total += sum * block_scale(w, o, b);
      }
      float& dst = out[m * ldo + o];
      dst = accumulate ? dst + alpha * total : alpha * total;
    }
  }
}

// Rows [o0, o1) of W for all M rows of x, four rows of x at a time.
// With `q8` (x quantized by quantize_q8) an INT4 weight of group 32 takes the int8-activation kernel.
void rows(const Weight& w, const float* x, int64_t ldx, int64_t m_rows, float* out, int64_t ldo, int64_t o0,
          int64_t o1, float alpha, bool accumulate, const Q8Rows* q8 = nullptr) {
  constexpr int64_t TILE = 16;  // with more than 4 rows of x, 16 weight rows at a time serve every block of 4 from cache
  if (m_rows > 4 && o1 - o0 > TILE) {
    for (int64_t t = o0; t < o1; t += TILE) rows(w, x, ldx, m_rows, out, ldo, t, std::min(o1, t + TILE), alpha, accumulate, q8);
    return;
  }
  for (int64_t m = 0; m < m_rows; m += 4) {
    const int mb = static_cast<int>(std::min<int64_t>(4, m_rows - m));
    const float* xm = x + m * ldx;
    float* om = out + m * ldo;
#if K2_AVX2
    if (q8 != nullptr && w.fmt == INT4 && w.block_cols == 32) {
      const Q8Rows qm{q8->q + m * q8->ldq, q8->d + m * q8->ldd, q8->ldq, q8->ldd};
      switch (mb) {
        case 1: rows_int4_q8<1>(w, qm, xm, ldx, om, ldo, o0, o1, alpha, accumulate); break;
        case 2: rows_int4_q8<2>(w, qm, xm, ldx, om, ldo, o0, o1, alpha, accumulate); break;
        case 3: rows_int4_q8<3>(w, qm, xm, ldx, om, ldo, o0, o1, alpha, accumulate); break;
        default: rows_int4_q8<4>(w, qm, xm, ldx, om, ldo, o0, o1, alpha, accumulate); break;
      }
      continue;
    }
    switch (mb) {
      case 1: rows_simd<1>(w, xm, ldx, om, ldo, o0, o1, alpha, accumulate); break;
      case 2: rows_simd<2>(w, xm, ldx, om, ldo, o0, o1, alpha, accumulate); break;
      case 3: rows_simd<3>(w, xm, ldx, om, ldo, o0, o1, alpha, accumulate); break;
      default: rows_simd<4>(w, xm, ldx, om, ldo, o0, o1, alpha, accumulate); break;
    }
#else
    rows_scalar(w, xm, ldx, mb, om, ldo, o0, o1, alpha, accumulate);
#endif
  }
}

Weight make_weight(int64_t fmt, int64_t data, int64_t scale, int64_t rows_, int64_t cols, int64_t block_rows,
                   int64_t block_cols) {
  TORCH_CHECK(fmt >= F32 && fmt <= INT4, "kimi_k2 kernels: unknown weight format ", fmt);
  TORCH_CHECK(data != 0, "kimi_k2 kernels: null weight pointer");
  TORCH_CHECK((fmt != FP8 && fmt != INT4) || scale != 0, "kimi_k2 kernels: quantized weight without scales");
  Weight w{fmt, reinterpret_cast<const uint8_t*>(data), reinterpret_cast<const uint8_t*>(scale), rows_, cols,
           1, cols, 1};
  if (fmt == FP8 || fmt == INT4) {
    TORCH_CHECK(block_rows > 0 && block_cols > 0, "kimi_k2 kernels: block sizes must be positive");
    w.block_rows = block_rows;
    w.block_cols = block_cols;
    w.scale_ld = (cols + block_cols - 1) / block_cols;
  }
  return w;
}

#ifndef K2_STANDALONE
void check_rows(const at::Tensor& t, const char* what, int64_t width) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "kimi_k2 kernels: ", what, " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == 2 && t.size(1) == width && t.stride(1) == 1, "kimi_k2 kernels: ", what, " must be [rows, ", width,
              "] with unit stride along the row, got sizes ", t.sizes(), " strides ", t.strides());
}

int64_t grain_for(int64_t rows_, int64_t work_per_row) {
  // Enough rows per task that a task reads >= ~32 KiB, and no more tasks than useful.
  return std::max<int64_t>(1, std::min<int64_t>(rows_, (32768 + work_per_row - 1) / std::max<int64_t>(1, work_per_row)));
}

// out[M, O] (+)= alpha * x[M, I] . W[O, I]^T
void linear(const at::Tensor& x, const at::Tensor& out, int64_t fmt, int64_t data, int64_t scale, int64_t rows_,
            int64_t cols, int64_t block_rows, int64_t block_cols, double alpha, bool accumulate, bool int8_activations) {
  const Weight w = make_weight(fmt, data, scale, rows_, cols, block_rows, block_cols);
  check_rows(x, "x", cols);
  check_rows(out, "out", rows_);
  TORCH_CHECK(x.size(0) == out.size(0), "kimi_k2 kernels: x has ", x.size(0), " rows, out ", out.size(0));
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t m_rows = x.size(0), ldx = x.stride(0), ldo = out.stride(0);
  const bool q8 = int8_activations && fmt == INT4;
  const Q8Buffer quantized = q8 ? quantize_q8(xp, ldx, m_rows, cols) : Q8Buffer{};
  const Q8Rows view = quantized.view();
  at::parallel_for(0, rows_, grain_for(rows_, row_bytes(w)), [&](int64_t o0, int64_t o1) {
    rows(w, xp, ldx, m_rows, op, ldo, o0, o1, static_cast<float>(alpha), accumulate, q8 ? &view : nullptr);
  });
}

// Rows [o0, o1) of W as float32 into out [o1 - o0, I] (prefill's tiles): the same decoders, each value times its
// scale in one rounding (fp8) or exactly (int4, bf16), so the tile equals quant_linear's float32 dequantization.
void dequantize_rows(const Weight& w, int64_t o0, int64_t o1, float* out) {
  const int64_t cols = w.cols, stride = row_bytes(w);
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = w.data + o * stride;
    float* dst = out + (o - o0) * cols;
    int64_t i = 0;
#if K2_AVX2
    if (w.fmt == FP8) {
      const float* row_scales = reinterpret_cast<const float*>(w.scale) + (o / w.block_rows) * w.scale_ld;
      for (; i + 16 <= cols; i += 16) {
        if (i / w.block_cols != (i + 15) / w.block_cols) break;  // a block edge inside these 16 (odd blocks)
        __m256 lo, hi;
        decode16_fp8(row, i, lo, hi);
        const __m256 s = _mm256_set1_ps(row_scales[i / w.block_cols] * 256.0f);
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(lo, s));
        _mm256_storeu_ps(dst + i + 8, _mm256_mul_ps(hi, s));
      }
    } else if (w.fmt == INT4 && w.block_cols == 32) {
      const uint16_t* row_scales = reinterpret_cast<const uint16_t*>(w.scale) + o * w.scale_ld;
      for (; i + 32 <= cols; i += 32) {
        __m256 v[4];
        decode32_int4(row + i / 2, bf16_to_float(row_scales[i / 32]), v);
        for (int k = 0; k < 4; ++k) _mm256_storeu_ps(dst + i + 8 * k, v[k]);
      }
    } else if (w.fmt == BF16) {
      for (; i + 8 <= cols; i += 8) _mm256_storeu_ps(dst + i, decode8<BF16>(row, i));
    }
#endif
    for (; i < cols; ++i) dst[i] = scalar_value(w, row, i) * block_scale(w, o, i / w.block_cols);
  }
}

void dequantize(const at::Tensor& out, int64_t fmt, int64_t data, int64_t scale, int64_t rows_, int64_t cols,
                int64_t block_rows, int64_t block_cols, int64_t o0) {
  const Weight w = make_weight(fmt, data, scale, rows_, cols, block_rows, block_cols);
  check_rows(out, "out", cols);
  TORCH_CHECK(out.is_contiguous() && o0 >= 0 && o0 + out.size(0) <= rows_, "kimi_k2 kernels: dequantize rows [", o0,
              ", ", o0 + out.size(0), ") of a weight with ", rows_, " rows into a contiguous tensor");
  float* op = out.data_ptr<float>();
  at::parallel_for(o0, o0 + out.size(0), grain_for(out.size(0), row_bytes(w)), [&](int64_t a, int64_t b) {
    dequantize_rows(w, a, b, op + (a - o0) * cols);
  });
}

// RMSNorm of a few float32 rows, single-threaded (a decode step's norms are one row each, where torch's
// F.rms_norm costs ~50 us of dispatch): out = x * (1 / sqrt(mean(x^2) + eps)) * weight, float32 throughout.
void rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& out) {
  const int64_t width = x.size(1);
  check_rows(x, "x", width);
  check_rows(out, "out", width);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.numel() == width,
              "kimi_k2 kernels: the norm weight must be a contiguous float32 vector of ", width);
  const float* w = weight.data_ptr<float>();
  for (int64_t r = 0; r < x.size(0); ++r) {
    const float* xr = x.data_ptr<float>() + r * x.stride(0);
    float* o = out.data_ptr<float>() + r * out.stride(0);
    int64_t i = 0;
    float sum = 0.0f;
#if K2_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= width; i += 16) {
      const __m256 a = _mm256_loadu_ps(xr + i), b = _mm256_loadu_ps(xr + i + 8);
      acc0 = _mm256_fmadd_ps(a, a, acc0);
      acc1 = _mm256_fmadd_ps(b, b, acc1);
    }
    sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; i < width; ++i) sum += xr[i] * xr[i];
    const float scale = 1.0f / std::sqrt(sum / static_cast<float>(width) + static_cast<float>(eps));
    for (int64_t j = 0; j < width; ++j) o[j] = xr[j] * scale * w[j];
  }
}

// The int8-activation quantizer alone, for tests: x [M, I] -> (q int8 [M, I/32*32] in the kernel's order, d [M, I/32]).
std::vector<at::Tensor> quantize_activations(const at::Tensor& x) {
  check_rows(x, "x", x.size(1));
  const Q8Buffer b = quantize_q8(x.data_ptr<float>(), x.stride(0), x.size(0), x.size(1));
  at::Tensor q = at::empty({x.size(0), b.ldq}, at::kChar), d = at::empty({x.size(0), b.ldd}, at::kFloat);
  std::memcpy(q.data_ptr<int8_t>(), b.q.data(), b.q.size());
  std::memcpy(d.data_ptr<float>(), b.d.data(), b.d.size() * sizeof(float));
  return {q, d};
}

// Routed experts of a few tokens in one call. table [E, 6] int64: per expert the (data, scale) addresses of
// gate_proj [I, D], up_proj [I, D], down_proj [D, I]. out[M, D] += sum_k weights[t, k] * down_e(silu(gate_e x_t) * up_e x_t).
// The pairs are grouped by expert, so an expert chosen by several tokens is read once for all of them. An id of
// -1 marks a pair whose expert another rank holds (expert parallelism): it is skipped.
void experts(const at::Tensor& x, const at::Tensor& expert_ids, const at::Tensor& weights, const at::Tensor& table,
             int64_t fmt, int64_t inter, int64_t block_rows, int64_t block_cols, const at::Tensor& out,
             bool int8_activations) {
  const int64_t hidden = x.size(1);
  check_rows(x, "x", hidden);
  check_rows(out, "out", hidden);
  TORCH_CHECK(expert_ids.scalar_type() == at::kLong && expert_ids.is_contiguous() && expert_ids.dim() == 2 &&
                  expert_ids.size(0) == x.size(0),
              "kimi_k2 kernels: expert ids must be a contiguous int64 [tokens, k] tensor");
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.sizes() == expert_ids.sizes(),
              "kimi_k2 kernels: routing weights must be a contiguous float32 tensor shaped like the expert ids");
  TORCH_CHECK(table.scalar_type() == at::kLong && table.is_contiguous() && table.dim() == 2 && table.size(1) == 6,
              "kimi_k2 kernels: the expert table must be a contiguous int64 [experts, 6] tensor");
  const int64_t tokens = x.size(0), top_k = expert_ids.size(1), n_experts = table.size(0);
  const int64_t all_pairs = tokens * top_k;
  const int64_t* ids = expert_ids.data_ptr<int64_t>();
  const int64_t* addr = table.data_ptr<int64_t>();
  for (int64_t p = 0; p < all_pairs; ++p)
    TORCH_CHECK(ids[p] >= -1 && ids[p] < n_experts, "kimi_k2 kernels: expert id ", ids[p], " outside [-1, ", n_experts,
                ") (-1: an expert held by another rank)");

  // Group the (token, slot) pairs by expert, so each used expert's weights are read once for all its tokens.
  std::vector<int64_t> order;
  order.reserve(all_pairs);
  for (int64_t p = 0; p < all_pairs; ++p)
    if (ids[p] >= 0) order.push_back(p);
  const int64_t pairs = static_cast<int64_t>(order.size());
  if (pairs == 0) return;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
  struct Group {
    Weight gate, up, down;
    int64_t begin, end;  // positions in `order`
  };
  std::vector<Group> groups;
  for (int64_t i = 0; i < pairs;) {
    int64_t j = i;
    while (j < pairs && ids[order[j]] == ids[order[i]]) ++j;
    const int64_t* a = addr + ids[order[i]] * 6;
    groups.push_back({make_weight(fmt, a[0], a[1], inter, hidden, block_rows, block_cols),
                      make_weight(fmt, a[2], a[3], inter, hidden, block_rows, block_cols),
                      make_weight(fmt, a[4], a[5], hidden, inter, block_rows, block_cols), i, j});
    i = j;
  }
  const int64_t n_groups = static_cast<int64_t>(groups.size());
  std::vector<float> xs(pairs * hidden), g(pairs * inter), u(pairs * inter), y(pairs * hidden);
  const float* xp = x.data_ptr<float>();
  for (int64_t i = 0; i < pairs; ++i)  // x rows in grouped order
    std::memcpy(xs.data() + i * hidden, xp + (order[i] / top_k) * x.stride(0), hidden * sizeof(float));
  const bool q8 = int8_activations && fmt == INT4;
  const Q8Buffer xq = q8 ? quantize_q8(xs.data(), hidden, pairs, hidden) : Q8Buffer{};
  // Runs body(group, o0, o1) over rows [o0, o1) of every used expert's `width`-row projection, split over threads;
  // the flat index runs over experts x rows.
  auto for_expert_rows = [&](int64_t width, int64_t bytes_per_row, auto body) {
    at::parallel_for(0, n_groups * width, grain_for(n_groups * width, bytes_per_row), [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1;) {
        const int64_t o0 = j % width, o1 = std::min(width, o0 + (j1 - j));
        body(groups[j / width], o0, o1);
        j += o1 - o0;
      }
    });
  };
  auto q8_rows = [&](const Q8Buffer& b, const Group& grp) {  // a group's rows of quantized activations
    return b.q.empty() ? Q8Rows{nullptr, nullptr, 0, 0}
                       : Q8Rows{b.q.data() + grp.begin * b.ldq, b.d.data() + grp.begin * b.ldd, b.ldq, b.ldd};
  };
  // Phase 1: gate and up rows of every used expert for all its tokens.
  for_expert_rows(inter, row_bytes(groups[0].gate), [&](const Group& grp, int64_t o0, int64_t o1) {
    const int64_t n = grp.end - grp.begin;
    const Q8Rows qv = q8_rows(xq, grp);
    const float* in = xs.data() + grp.begin * hidden;
    rows(grp.gate, in, hidden, n, g.data() + grp.begin * inter, inter, o0, o1, 1.0f, false, q8 ? &qv : nullptr);
    rows(grp.up, in, hidden, n, u.data() + grp.begin * inter, inter, o0, o1, 1.0f, false, q8 ? &qv : nullptr);
  });
  for (int64_t j = 0; j < pairs * inter; ++j) g[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];  // silu(gate) * up
  const Q8Buffer hq = q8 ? quantize_q8(g.data(), inter, pairs, inter) : Q8Buffer{};
  // Phase 2: down rows of every used expert.
  for_expert_rows(hidden, row_bytes(groups[0].down), [&](const Group& grp, int64_t o0, int64_t o1) {
    const Q8Rows qv = q8_rows(hq, grp);
    rows(grp.down, g.data() + grp.begin * inter, inter, grp.end - grp.begin, y.data() + grp.begin * hidden, hidden, o0,
         o1, 1.0f, false, q8 ? &qv : nullptr);
  });
  // Phase 3: each pair's output, times its routing weight, into its token's row.
  const float* rw = weights.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t i = 0; i < pairs; ++i) {
    const float a = rw[order[i]];
    const float* yp = y.data() + i * hidden;
    float* dst = op + (order[i] / top_k) * out.stride(0);
    for (int64_t o = 0; o < hidden; ++o) dst[o] += a * yp[o];
  }
}

bool has_avx2() { return K2_AVX2 != 0; }
#endif

}  // namespace
#ifndef K2_STANDALONE

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  init_fp8_table();
  m.def("linear", &linear, "out (+)= alpha * x . W^T for a weight stored as fp32/bf16/fp8/int4");
  m.def("experts", &experts, "routed experts of a few tokens: out += sum_k w_k down_e(silu(gate_e x) * up_e x)");
  m.def("rms_norm", &rms_norm, "RMSNorm of a few float32 rows (decode)");
  m.def("dequantize", &dequantize, "rows of a stored weight as float32 (prefill's tiles)");
  m.def("quantize_activations", &quantize_activations, "the int8-activation quantizer (tests)");
  m.def("has_avx2", &has_avx2, "whether the build has the AVX2/FMA/F16C kernels (else scalar)");
}
#endif
