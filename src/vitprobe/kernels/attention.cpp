// One layer's attention for vitprobe's capture, on the CPU: per (image, tile of query rows) task, every
// head's scores are computed once, softmaxed exactly and reduced while the tile sits in cache, and the
// same probabilities give the attention output P·V. Nothing of size (B, heads, T, T) is allocated
// unless the caller asks for the full maps.
//
// Per row: s = scale·q·kᵀ (+ bias), m = max s, e = exp(s − m), z = Σ e, p = e / z; the entropy is
// log z − Σ p·(s − m); a row dot is Σ p·W[row]; a mass Σ p[start:]. Products go through ATen's BLAS
// (torch's own sgemm, single-threaded inside the task); tasks run on torch's intra-op threads.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <dlfcn.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

// Column-major C (m, n) = op(A) · B with op(A) = Aᵀ when transpose_a, through the BLAS that torch links
// (its Fortran sgemm_, found at run time) or, where torch exports none, through at::mm on views.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);

SgemmFn find_sgemm() {
  static const SgemmFn fn = reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return fn;
}

void gemm(bool transpose_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (SgemmFn sgemm = find_sgemm()) {
    const char ta = transpose_a ? 'T' : 'N', tb = 'N';
    const int im = m, in = n, ik = k, ilda = lda, ildb = ldb, ildc = ldc;
    const float beta = 0.0f;
    sgemm(&ta, &tb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
    return;
  }
  // Row-major views of the same memory: Cᵀ (n, m) = Bᵀ (n, k) · op(A)ᵀ (k, m).
  auto opts = at::TensorOptions().dtype(at::kFloat);
  auto bt = at::from_blob(const_cast<float*>(b), {n, k}, {ldb, 1}, opts);
  auto at_ = transpose_a ? at::from_blob(const_cast<float*>(a), {k, m}, {1, lda}, opts)
                         : at::from_blob(const_cast<float*>(a), {k, m}, {lda, 1}, opts);
  auto ct = at::from_blob(c, {n, m}, {ldc, 1}, opts);
  at::mm_out(ct, bt, at_);
  if (alpha != 1.0f) ct.mul_(alpha);
}

// exp(x) for x <= 0 in float32, written so that the compiler vectorises the loops that call it:
// x = n·ln2 + r with |r| <= ln2/2, exp(r) by a degree-7 polynomial (relative error ~1e-7), 2^n
// through the exponent bits. Below -87.3 (exp < 1.2e-38, under float32's normal range) it is 0.
inline float exp_nonpositive(float x) {
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693145751953125f;
  const float ln2_lo = 1.428606765330187e-06f;
  const float round_magic = 12582912.0f;  // 1.5·2^23: adding it rounds to the nearest integer
  const bool under = x < -87.3f;
  x = under ? -87.3f : x;
  float n = (x * log2e + round_magic) - round_magic;
  float r = (x - n * ln2_hi) - n * ln2_lo;
  float p = 1.9841270e-4f;  // 1/5040
  p = p * r + 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return under ? 0.0f : p * scale;
}

struct Strided4 {  // a float32 view (B, heads, rows, cols) with its strides, last one 1
  const float* data = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  const float* row(int64_t b, int64_t h, int64_t i) const { return data + b * s0 + h * s1 + i * s2; }
};

Strided4 view4(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && t.stride(3) == 1,
              "expected a float32 (B, heads, T, d) tensor with unit stride in its last dimension");
  return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

float* out_ptr(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

}  // namespace

// Every output is preallocated by the caller, contiguous float32; an absent one is not computed.
// fused_mode: 0 mean, 1 max, 2 min over heads, one per fused_out (B, T, T).
void attend(const at::Tensor& q, const at::Tensor& k, const c10::optional<at::Tensor>& v, double scale,
            const c10::optional<at::Tensor>& bias, int64_t cls_index, const c10::optional<at::Tensor>& cls_out,
            const std::vector<at::Tensor>& fused_out, const std::vector<int64_t>& fused_mode,
            const c10::optional<at::Tensor>& full_out, const c10::optional<at::Tensor>& output,
            const c10::optional<at::Tensor>& entropy_out, const std::vector<at::Tensor>& dot_weights,
            const std::vector<at::Tensor>& dot_out, const std::vector<int64_t>& mass_start,
            const std::vector<at::Tensor>& mass_out, int64_t tile_rows) {
  const Strided4 Q = view4(q), K = view4(k);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(2) == T && k.size(3) == d, "q and k differ in shape");
  Strided4 V, Bias;
  int64_t dv = 0;
  if (v.has_value()) {
    V = view4(*v);
    dv = v->size(3);
    TORCH_CHECK(output.has_value() && output->is_contiguous(), "values need a contiguous output");
  }
  if (bias.has_value()) Bias = view4(*bias);
  TORCH_CHECK(fused_out.size() == fused_mode.size() && dot_weights.size() == dot_out.size() &&
              mass_start.size() == mass_out.size(), "unpaired outputs");
  std::vector<float*> fused, dots, masses;
  std::vector<const float*> weights;
  for (const auto& t : fused_out) fused.push_back(t.data_ptr<float>());
  for (const auto& t : dot_out) dots.push_back(t.data_ptr<float>());
  for (const auto& t : mass_out) masses.push_back(t.data_ptr<float>());
  for (const auto& t : dot_weights) {
    TORCH_CHECK(t.is_contiguous() && t.size(0) == T && t.size(1) == T, "row-dot weights must be (T, T)");
    weights.push_back(t.data_ptr<float>());
  }
  float* cls = out_ptr(cls_out);
  float* full = out_ptr(full_out);
  float* out = out_ptr(output);
  float* ent = out_ptr(entropy_out);
  const bool want_cls = cls != nullptr && cls_index >= 0 && cls_index < T;
  const int64_t rows_per_tile = std::max<int64_t>(1, std::min(tile_rows, T));
  const int64_t tiles = (T + rows_per_tile - 1) / rows_per_tile;
  const float inv_heads = 1.0f / static_cast<float>(H);
  const float fscale = static_cast<float>(scale);

  // Tasks are taken one at a time from a shared counter, not split into equal runs up front: on a machine
  // that other processes share, a descheduled thread then leaves its tasks to the others instead of
  // holding up the whole layer.
  std::atomic<int64_t> next_task{0};
  const int64_t n_tasks = B * tiles;
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<float> scores(rows_per_tile * T);
    for (int64_t task = next_task++; task < n_tasks; task = next_task++) {
      const int64_t b = task / tiles;
      const int64_t r0 = (task % tiles) * rows_per_tile;
      const int64_t r = std::min(rows_per_tile, T - r0);
      for (int64_t h = 0; h < H; ++h) {
        float* S = scores.data();
        // S (r, T) = scale · Q[b, h, r0:r0+r] · K[b, h]ᵀ, as column-major Sᵀ = K · Qᵀ.
        gemm(true, T, r, d, fscale, K.row(b, h, 0), K.s2, Q.row(b, h, r0), Q.s2, S, T);
        for (int64_t i = 0; i < r; ++i) {
          float* s = S + i * T;
          const int64_t row = r0 + i;
          if (Bias.data != nullptr) {
            const float* add = Bias.row(b, h, row);
#pragma omp simd
            for (int64_t t = 0; t < T; ++t) s[t] += add[t];
          }
          float m = -INFINITY;
#pragma omp simd reduction(max : m)
          for (int64_t t = 0; t < T; ++t) m = m > s[t] ? m : s[t];  // not std::max: that one is not vectorised
          float z = 0.0f, es = 0.0f;
#pragma omp simd reduction(+ : z, es)
          for (int64_t t = 0; t < T; ++t) {
            const float x = s[t] - m;
            const float e = exp_nonpositive(x);
            s[t] = e;
            z += e;
            es += e * x;
          }
          const float inv_z = 1.0f / z;
#pragma omp simd
          for (int64_t t = 0; t < T; ++t) s[t] *= inv_z;
          const int64_t bh_row = (b * H + h) * T + row;
          if (ent != nullptr) ent[bh_row] = std::log(z) - es * inv_z;
          for (size_t w = 0; w < weights.size(); ++w) {
            const float* wrow = weights[w] + row * T;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t t = 0; t < T; ++t) acc += s[t] * wrow[t];
            dots[w][bh_row] = acc;
          }
          for (size_t j = 0; j < masses.size(); ++j) {
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t t = mass_start[j]; t < T; ++t) acc += s[t];
            masses[j][bh_row] = acc;
          }
          if (want_cls && row == cls_index) std::memcpy(cls + (b * H + h) * T, s, T * sizeof(float));
          if (full != nullptr) std::memcpy(full + bh_row * T, s, T * sizeof(float));
          for (size_t f = 0; f < fused.size(); ++f) {
            float* dst = fused[f] + (b * T + row) * T;
            if (h == 0) {
              if (fused_mode[f] == 0) {
#pragma omp simd
                for (int64_t t = 0; t < T; ++t) dst[t] = s[t] * inv_heads;
              } else {
                std::memcpy(dst, s, T * sizeof(float));
              }
            } else if (fused_mode[f] == 0) {
#pragma omp simd
              for (int64_t t = 0; t < T; ++t) dst[t] += s[t] * inv_heads;
            } else if (fused_mode[f] == 1) {
#pragma omp simd
              for (int64_t t = 0; t < T; ++t) dst[t] = dst[t] > s[t] ? dst[t] : s[t];
            } else {
#pragma omp simd
              for (int64_t t = 0; t < T; ++t) dst[t] = dst[t] < s[t] ? dst[t] : s[t];
            }
          }
        }
        if (out != nullptr) {
          // O (r, dv) = P (r, T) · V[b, h] (T, dv), as column-major Oᵀ = Vᵀ · Pᵀ.
          gemm(false, dv, r, T, 1.0f, V.row(b, h, 0), V.s2, S, T, out + ((b * H + h) * T + r0) * dv, dv);
        }
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attend", &attend, py::call_guard<py::gil_scoped_release>(),
        "One layer's attention: scores, exact softmax, the requested reductions and P·V per row tile");
}
