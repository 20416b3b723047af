#define K2_STANDALONE
#include "../kimi_k2/kernels/csrc/products.cpp"
#include <cstdio>
#include <random>
// The AVX2 kernels (rows) against the scalar build of the same arithmetic (rows_scalar), on random data in
// every format with odd shapes; built and run by tests/test_kernels.py. Exit status 0 when they agree.
int main() {
  init_fp8_table();
  std::mt19937 rng(1);
  double worst = 0;
  for (int64_t O : {37, 130}) for (int64_t I : {77, 200, 333}) for (int fmt = 0; fmt < 4; ++fmt) {
    const int64_t rowb = fmt == 0 ? I * 4 : fmt == 1 ? I * 2 : fmt == 2 ? I : ((I + 7) / 8) * 4;
    std::vector<uint8_t> data(O * rowb);
    for (auto& b : data) b = rng() & 0xFF;
    if (fmt == 0) { float* f = (float*)data.data(); for (int64_t i = 0; i < O * I; ++i) f[i] = ((int)(rng() % 2001) - 1000) / 1000.0f; }
    if (fmt == 1) { uint16_t* h = (uint16_t*)data.data(); for (int64_t i = 0; i < O * I; ++i) h[i] = 0x3f00 | (rng() & 0x80ff); }
    if (fmt == 2) for (auto& b : data) if ((b & 0x7F) == 0x7F) b = 0x3A;
    std::vector<float> f8s(((O + 127) / 128) * ((I + 127) / 128), 0.01f);
    std::vector<uint16_t> i4s(O * ((I + 31) / 32), 0x3c23);
    Weight w = make_weight(fmt, (int64_t)data.data(), fmt == 2 ? (int64_t)f8s.data() : (int64_t)i4s.data(), O, I, fmt == 2 ? 128 : 1, fmt == 2 ? 128 : 32);
    for (int mb = 1; mb <= 5; ++mb) {
      std::vector<float> x(mb * I), a(mb * O), b(mb * O);
      for (auto& v : x) v = ((int)(rng() % 2001) - 1000) / 1000.0f;
      rows(w, x.data(), I, mb, a.data(), O, 0, O, 1.0f, false);
      rows_scalar(w, x.data(), I, mb, b.data(), O, 0, O, 1.0f, false);
      for (int64_t k = 0; k < mb * O; ++k) {
        const double d = std::fabs(a[k] - b[k]) / (std::fabs(b[k]) + 1.0);  // sums are O(1)-O(100)
        worst = std::max(worst, d);
      }
    }
  }
  printf("worst relative difference AVX2 vs scalar: %.3g\n", worst);
  return worst < 1e-4 ? 0 : 1;
}
