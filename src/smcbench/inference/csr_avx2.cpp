// y = x Wᵀ + b with W in CSR (int32 row offsets and columns, fp32 values): the `csr-avx2` inference backend.
// x is transposed once into a zero-padded (in, N8) buffer so that each nonzero w[o, j] becomes an AXPY of
// x's column j into y's row o, eight outputs per AVX2 FMA; 64 columns of x at a time stay in the L2 cache while
// every output row of a thread's share consumes them, and the 8 accumulators of a row stay in registers.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {
constexpr int64_t kWidth = 64;  // columns per block: 8 AVX2 registers of accumulators

template <int Vectors>
inline void row_block(const int32_t* cols, const float* vals, int64_t begin, int64_t end, const float* xt,
                      int64_t stride, float* out) {
  __m256 acc[Vectors];
  for (int k = 0; k < Vectors; ++k) acc[k] = _mm256_setzero_ps();
  for (int64_t p = begin; p < end; ++p) {
    const __m256 v = _mm256_broadcast_ss(vals + p);
    const float* xr = xt + static_cast<int64_t>(cols[p]) * stride;
    for (int k = 0; k < Vectors; ++k) acc[k] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xr + 8 * k), acc[k]);
  }
  for (int k = 0; k < Vectors; ++k) _mm256_storeu_ps(out + 8 * k, acc[k]);
}

using Block = void (*)(const int32_t*, const float*, int64_t, int64_t, const float*, int64_t, float*);
const Block kBlocks[9] = {nullptr, row_block<1>, row_block<2>, row_block<3>, row_block<4>,
                          row_block<5>, row_block<6>, row_block<7>, row_block<8>};
}  // namespace

torch::Tensor csr_linear(torch::Tensor x, torch::Tensor rowptr, torch::Tensor cols, torch::Tensor vals,
                         c10::optional<torch::Tensor> bias, int64_t out_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x: a 2-D float32 tensor");
  TORCH_CHECK(rowptr.scalar_type() == torch::kInt32 && cols.scalar_type() == torch::kInt32, "int32 indices");
  const int64_t n = x.size(0), in = x.size(1), padded = (n + 7) / 8 * 8;
  auto xt = torch::zeros({in, padded}, x.options());
  xt.narrow(1, 0, n).copy_(x.t());
  auto yt = torch::empty({out_features, padded}, x.options());
  const int32_t* rp = rowptr.data_ptr<int32_t>();
  const int32_t* cp = cols.data_ptr<int32_t>();
  const float* vp = vals.data_ptr<float>();
  const float* xp = xt.data_ptr<float>();
  float* yp = yt.data_ptr<float>();
  at::parallel_for(0, out_features, 16, [&](int64_t o0, int64_t o1) {
    for (int64_t c0 = 0; c0 < padded; c0 += kWidth) {
      const int vectors = static_cast<int>(std::min(kWidth, padded - c0) / 8);
      const Block block = kBlocks[vectors];
      for (int64_t o = o0; o < o1; ++o) block(cp, vp, rp[o], rp[o + 1], xp + c0, padded, yp + o * padded + c0);
    }
  });
  auto y = yt.narrow(1, 0, n).t().contiguous();
  if (bias.has_value()) y.add_(*bias);
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("csr_linear", &csr_linear, "CSR linear layer (AVX2)"); }
