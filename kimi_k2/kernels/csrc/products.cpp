// Few-row products that read K2's weight formats as stored: fp32, bf16, block FP8 (e4m3 + float32 scale per
// 128x128 block) and INT4 group-32 (compressed-tensors pack-quantized: int32 words of 8 nibbles, bf16 scale per
// 32 inputs). out[m, o] (+)= alpha * sum_i x[m, i] * W[o, i], x and out float32.
//
// The weight is decoded in registers (never dequantized to memory) and each scale block's partial sum is
// multiplied by its scale once: y = sum_blocks scale_b * sum_{i in b} q_i x_i. The pure-torch reference of the
// same arithmetic is kimi_k2/kernels/reference.py; tests/test_kernels.py checks that they agree.
//
// Decoding, per 8 inputs (AVX2 + FMA + F16C):
//   bf16  widen u16 -> u32, shift left 16: the float32 with the same top bits (exact).
//   fp8   e4m3fn byte s.eeee.mmm -> the fp16 bits s.0eeee.mmm0000000 (sign to bit 15, the rest shifted left by 7),
//         then F16C to float32: the value divided by 2^8 (fp16's exponent bias is 15, e4m3's 7), subnormals
//         included; the 2^8 is folded into the block scale, so the decoded product is exact.
//   int4  broadcast the word, shift lane j right by 4j, mask the nibble, subtract 8, convert.
// Threads split the output rows (at::parallel_for, so torch.set_num_threads applies); rows of x are taken four
// at a time so a decoded weight vector serves up to four rows.
//
// Pointers come as integers: a weight is (data, scale) addresses into tensors the Python side keeps alive
// (possibly views into memory-mapped safetensors files), which lets an expert bank be a table of addresses
// instead of a stacked copy.

#include <torch/extension.h>
#include <ATen/Parallel.h>

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

#if K2_AVX2
// Eight stored values starting at input i (a multiple of 8), as float32 (fp8: value / 256).
template <int64_t FMT>
inline __m256 decode8(const uint8_t* row, int64_t i) {
  if constexpr (FMT == F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i);
  } else if constexpr (FMT == BF16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  } else if constexpr (FMT == FP8) {
    const __m128i bytes = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + i)));
    const __m128i magnitude = _mm_slli_epi16(_mm_and_si128(bytes, _mm_set1_epi16(0x7F)), 7);
    const __m128i sign = _mm_slli_epi16(_mm_and_si128(bytes, _mm_set1_epi16(0x80)), 8);
    return _mm256_cvtph_ps(_mm_or_si128(magnitude, sign));
  } else {
    const __m256i word = _mm256_set1_epi32(reinterpret_cast<const int32_t*>(row)[i >> 3]);
    const __m256i nibble =
        _mm256_and_si256(_mm256_srlv_epi32(word, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)), _mm256_set1_epi32(0xF));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(nibble, _mm256_set1_epi32(8)));
  }
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Rows [o0, o1) of W against MB rows of x: MB x (independent FMA chains of 8 inputs).
template <int64_t FMT, int MB>
void rows_kernel(const Weight& w, const float* x, int64_t ldx, float* out, int64_t ldo, int64_t o0, int64_t o1,
                 float alpha, bool accumulate) {
  constexpr int U = MB == 1 ? 4 : 2;  // FMA chains per row of x
  const float decode_factor = FMT == FP8 ? 256.0f : 1.0f;
  const int64_t stride = row_bytes(w), cols = w.cols, span = w.block_cols;
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = w.data + o * stride;
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
        for (int u = 0; u < U; ++u) wv[u] = decode8<FMT>(row, i + 8 * u);
        for (int m = 0; m < MB; ++m)
          for (int u = 0; u < U; ++u) acc[m][u] = _mm256_fmadd_ps(wv[u], _mm256_loadu_ps(x + m * ldx + i + 8 * u), acc[m][u]);
      }
      for (; i + 8 <= s1; i += 8) {
        const __m256 wv = decode8<FMT>(row, i);
        for (int m = 0; m < MB; ++m) acc[m][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + i), acc[m][0]);
      }
      const float scale = block_scale(w, o, b);
      const __m256 sv = _mm256_set1_ps(scale * decode_factor);
      for (int m = 0; m < MB; ++m) {
        __m256 sum = acc[m][0];
        for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[m][u]);
        total[m] = _mm256_fmadd_ps(sum, sv, total[m]);
      }
      for (; i < s1; ++i) {  // inputs past the last full 8 of a block (odd shapes only)
        const float v = scalar_value(w, row, i) * scale;
        for (int m = 0; m < MB; ++m) tail[m] += v * x[m * ldx + i];
      }
    }
    for (int m = 0; m < MB; ++m) {
      const float y = alpha * (hsum(total[m]) + tail[m]);
      float& dst = out[m * ldo + o];
      dst = accumulate ? dst + y : y;
    }
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

template <int64_t FMT>
void rows_dispatch_mb(const Weight& w, const float* x, int64_t ldx, int mb, float* out, int64_t ldo, int64_t o0,
                      int64_t o1, float alpha, bool accumulate) {
#if K2_AVX2
  switch (mb) {
    case 1: return rows_kernel<FMT, 1>(w, x, ldx, out, ldo, o0, o1, alpha, accumulate);
    case 2: return rows_kernel<FMT, 2>(w, x, ldx, out, ldo, o0, o1, alpha, accumulate);
    case 3: return rows_kernel<FMT, 3>(w, x, ldx, out, ldo, o0, o1, alpha, accumulate);
    default: return rows_kernel<FMT, 4>(w, x, ldx, out, ldo, o0, o1, alpha, accumulate);
  }
#else
  rows_scalar(w, x, ldx, mb, out, ldo, o0, o1, alpha, accumulate);
#endif
}

// Rows [o0, o1) of W for all M rows of x, four rows of x at a time.
void rows(const Weight& w, const float* x, int64_t ldx, int64_t m_rows, float* out, int64_t ldo, int64_t o0,
          int64_t o1, float alpha, bool accumulate) {
  for (int64_t m = 0; m < m_rows; m += 4) {
    const int mb = static_cast<int>(std::min<int64_t>(4, m_rows - m));
    const float* xm = x + m * ldx;
    float* om = out + m * ldo;
    switch (w.fmt) {
      case F32: rows_dispatch_mb<F32>(w, xm, ldx, mb, om, ldo, o0, o1, alpha, accumulate); break;
      case BF16: rows_dispatch_mb<BF16>(w, xm, ldx, mb, om, ldo, o0, o1, alpha, accumulate); break;
      case FP8: rows_dispatch_mb<FP8>(w, xm, ldx, mb, om, ldo, o0, o1, alpha, accumulate); break;
      default: rows_dispatch_mb<INT4>(w, xm, ldx, mb, om, ldo, o0, o1, alpha, accumulate); break;
    }
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
            int64_t cols, int64_t block_rows, int64_t block_cols, double alpha, bool accumulate) {
  const Weight w = make_weight(fmt, data, scale, rows_, cols, block_rows, block_cols);
  check_rows(x, "x", cols);
  check_rows(out, "out", rows_);
  TORCH_CHECK(x.size(0) == out.size(0), "kimi_k2 kernels: x has ", x.size(0), " rows, out ", out.size(0));
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t m_rows = x.size(0), ldx = x.stride(0), ldo = out.stride(0);
  at::parallel_for(0, rows_, grain_for(rows_, row_bytes(w)), [&](int64_t o0, int64_t o1) {
    rows(w, xp, ldx, m_rows, op, ldo, o0, o1, static_cast<float>(alpha), accumulate);
  });
}

// Routed experts of a few tokens in one call. table [E, 6] int64: per expert the (data, scale) addresses of
// gate_proj [I, D], up_proj [I, D], down_proj [D, I]. out[M, D] += sum_k weights[t, k] * down_e(silu(gate_e x_t) * up_e x_t).
void experts(const at::Tensor& x, const at::Tensor& expert_ids, const at::Tensor& weights, const at::Tensor& table,
             int64_t fmt, int64_t inter, int64_t block_rows, int64_t block_cols, const at::Tensor& out) {
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
  const int64_t pairs = tokens * top_k;
  const int64_t* ids = expert_ids.data_ptr<int64_t>();
  const int64_t* addr = table.data_ptr<int64_t>();
  for (int64_t p = 0; p < pairs; ++p)
    TORCH_CHECK(ids[p] >= 0 && ids[p] < n_experts, "kimi_k2 kernels: expert id ", ids[p], " outside [0, ", n_experts, ")");

  std::vector<Weight> gate(pairs), up(pairs), down(pairs);
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t* a = addr + ids[p] * 6;
    gate[p] = make_weight(fmt, a[0], a[1], inter, hidden, block_rows, block_cols);
    up[p] = make_weight(fmt, a[2], a[3], inter, hidden, block_rows, block_cols);
    down[p] = make_weight(fmt, a[4], a[5], hidden, inter, block_rows, block_cols);
  }
  std::vector<float> g(pairs * inter), u(pairs * inter), y(pairs * hidden);
  const float* xp = x.data_ptr<float>();
  // Phase 1: gate and up rows of every (token, expert) pair; the flat index runs over pairs x rows.
  at::parallel_for(0, pairs * inter, grain_for(pairs * inter, row_bytes(gate[0])), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1;) {
      const int64_t p = j / inter, o0 = j % inter, o1 = std::min(inter, o0 + (j1 - j));
      const float* xt = xp + (p / top_k) * x.stride(0);
      rows(gate[p], xt, hidden, 1, g.data() + p * inter, inter, o0, o1, 1.0f, false);
      rows(up[p], xt, hidden, 1, u.data() + p * inter, inter, o0, o1, 1.0f, false);
      j += o1 - o0;
    }
  });
  for (int64_t j = 0; j < pairs * inter; ++j) g[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];  // silu(gate) * up
  // Phase 2: down rows of every pair.
  at::parallel_for(0, pairs * hidden, grain_for(pairs * hidden, row_bytes(down[0])), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1;) {
      const int64_t p = j / hidden, o0 = j % hidden, o1 = std::min(hidden, o0 + (j1 - j));
      rows(down[p], g.data() + p * inter, inter, 1, y.data() + p * hidden, hidden, o0, o1, 1.0f, false);
      j += o1 - o0;
    }
  });
  // Phase 3: weighted sum over each token's experts, in routing order.
  const float* rw = weights.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t k = 0; k < top_k; ++k) {
      const float a = rw[t * top_k + k];
      const float* yp = y.data() + (t * top_k + k) * hidden;
      float* dst = op + t * out.stride(0);
      for (int64_t o = 0; o < hidden; ++o) dst[o] += a * yp[o];
    }
}

bool has_avx2() { return K2_AVX2 != 0; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  init_fp8_table();
  m.def("linear", &linear, "out (+)= alpha * x . W^T for a weight stored as fp32/bf16/fp8/int4");
  m.def("experts", &experts, "routed experts of a few tokens: out += sum_k w_k down_e(silu(gate_e x) * up_e x)");
  m.def("has_avx2", &has_avx2, "whether the build has the AVX2/FMA/F16C kernels (else scalar)");
}
