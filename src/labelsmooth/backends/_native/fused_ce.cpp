// Fused one-pass label-smoothed cross-entropy for CPU (see labelsmooth/backends/cpu.py).
//
// Per row i of (N, K) logits z, with the coefficients b_i, c_i, e_i, u of labelsmooth/_stats.py:
//   m = max z, s = sum exp(z - m), lse = m + log s, zy = z_y, sz = sum u_k z_k,
//   grad_k = scale * (a p_k - b [k = y] - c u_k),  p = exp(z - m) / s,  a = b + c U + 2 zl e lse.
// The exp of each logit is computed once (stored in the gradient row, or a per-thread fp32 row for
// half-precision inputs) and reused for the gradient while the row is still in cache.
// Plain C ABI (called through ctypes): no pybind, no ninja, a short compile.
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using at::vec::Vectorized;

// ATen's fast vectorised exp (the one torch's own CPU softmax uses; <= 20 ulp in fp32), exact
// Sleef exp in fp64. Both give exactly 0 for -inf.
inline Vectorized<float> vexp(const Vectorized<float>& x) { return x.exp_u20(); }
inline Vectorized<double> vexp(const Vectorized<double>& x) { return x.exp(); }

// z: one row in acc_t. dst: where exp(z - m) goes (may alias z), or nullptr for the loss only.
template <typename acc_t>
inline void row_stats(const acc_t* z, int64_t K, int64_t y, const acc_t* u, acc_t* dst,
                      acc_t& m_out, acc_t& s_out, acc_t& zy, acc_t& sz) {
  using V = Vectorized<acc_t>;
  constexpr int64_t W = V::size();
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  // Pass 1: max, sum of (u *) z. A zero u_k skips z_k (0 * -inf is 0, as in the reference).
  V vmax0(ninf), vmax1(ninf), vs0(0), vs1(0);
  int64_t k = 0;
  if (u) {
    const V zero(0);
    for (; k + 2 * W <= K; k += 2 * W) {
      V a = V::loadu(z + k), b = V::loadu(z + k + W);
      V ua = V::loadu(u + k), ub = V::loadu(u + k + W);
      vmax0 = at::vec::maximum(vmax0, a);
      vmax1 = at::vec::maximum(vmax1, b);
      vs0 = vs0 + V::blendv(ua * a, zero, ua == zero);
      vs1 = vs1 + V::blendv(ub * b, zero, ub == zero);
    }
  } else {
    for (; k + 2 * W <= K; k += 2 * W) {
      V a = V::loadu(z + k), b = V::loadu(z + k + W);
      vmax0 = at::vec::maximum(vmax0, a);
      vmax1 = at::vec::maximum(vmax1, b);
      vs0 = vs0 + a;
      vs1 = vs1 + b;
    }
  }
  acc_t m = at::vec::vec_reduce_all<acc_t>(
      [](V& x, V& y2) { return at::vec::maximum(x, y2); }, at::vec::maximum(vmax0, vmax1));
  acc_t s1 = at::vec::vec_reduce_all<acc_t>([](V& x, V& y2) { return x + y2; }, vs0 + vs1);
  for (; k < K; ++k) {
    acc_t v = z[k];
    m = v > m ? v : m;
    if (u) {
      if (u[k] != 0) s1 += u[k] * v;
    } else {
      s1 += v;
    }
  }
  zy = z[y];
  sz = s1;
  if (m == ninf) m = 0;  // an all -inf row: s = 0, lse = -inf, p = 0 (no NaN)
  // Pass 2: s = sum exp(z - m), storing the exponentials when a gradient is wanted.
  const V vm(m);
  V acc0(0), acc1(0);
  k = 0;
  if (dst) {
    for (; k + 2 * W <= K; k += 2 * W) {
      V a = vexp(V::loadu(z + k) - vm);
      V b = vexp(V::loadu(z + k + W) - vm);
      a.store(dst + k);
      b.store(dst + k + W);
      acc0 = acc0 + a;
      acc1 = acc1 + b;
    }
  } else {
    for (; k + 2 * W <= K; k += 2 * W) {
      acc0 = acc0 + vexp(V::loadu(z + k) - vm);
      acc1 = acc1 + vexp(V::loadu(z + k + W) - vm);
    }
  }
  acc_t s = at::vec::vec_reduce_all<acc_t>([](V& x, V& y2) { return x + y2; }, acc0 + acc1);
  for (; k < K; ++k) {
    acc_t p = std::exp(z[k] - m);
    if (dst) dst[k] = p;
    s += p;
  }
  m_out = m;
  s_out = s;
}

// p (acc_t, holding exp(z - m)) -> out (scalar_t): A p_k - C u_k, then out_y -= B.
template <typename scalar_t, typename acc_t>
inline void write_grad(const acc_t* p, scalar_t* out, int64_t K, int64_t y, const acc_t* u,
                       acc_t A, acc_t B, acc_t C) {
  using V = Vectorized<acc_t>;
  constexpr int64_t W = V::size();
  const V vA(A), vC(C);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    int64_t k = 0;
    if (u && C != 0) {
      for (; k + W <= K; k += W)
        (vA * V::loadu(p + k) - vC * V::loadu(u + k)).store(out + k);
      for (; k < K; ++k) out[k] = A * p[k] - C * u[k];
    } else {
      for (; k + W <= K; k += W) (vA * V::loadu(p + k) - vC).store(out + k);
      for (; k < K; ++k) out[k] = A * p[k] - C;
    }
    out[y] -= B;
  } else {
    // half precision: compute in place in the fp32 row, then convert once.
    acc_t* q = const_cast<acc_t*>(p);
    int64_t k = 0;
    if (u && C != 0) {
      for (; k + W <= K; k += W)
        (vA * V::loadu(q + k) - vC * V::loadu(u + k)).store(q + k);
      for (; k < K; ++k) q[k] = A * q[k] - C * u[k];
    } else {
      for (; k + W <= K; k += W) (vA * V::loadu(q + k) - vC).store(q + k);
      for (; k < K; ++k) q[k] = A * q[k] - C;
    }
    q[y] -= B;
    at::vec::convert(q, out, K);
  }
}

template <typename scalar_t>
inline void to_acc(const scalar_t* src, float* dst, int64_t K) {
  using VS = Vectorized<scalar_t>;
  constexpr int64_t W = VS::size();
  int64_t k = 0;
  for (; k + W <= K; k += W) {
    auto [lo, hi] = at::vec::convert_to_float<scalar_t>(VS::loadu(src + k));
    lo.store(dst + k);
    hi.store(dst + k + W / 2);
  }
  for (; k < K; ++k) dst[k] = static_cast<float>(src[k]);
}

template <typename scalar_t, typename acc_t>
int fused_ce(const scalar_t* logits, int64_t N, int64_t K, int64_t stride, const int64_t* target,
             const acc_t* b, const acc_t* c, const acc_t* e, const acc_t* u, acc_t U, acc_t zl,
             acc_t scale, acc_t* lse_out, acc_t* zy_out, acc_t* sz_out, scalar_t* grad,
             int64_t grad_stride) {
  constexpr bool same = std::is_same_v<scalar_t, acc_t>;
  int bad = 0;
#pragma omp parallel reduction(| : bad)
  {
    // One fp32 row per thread for half-precision inputs: the only temporary besides the gradient.
    std::vector<acc_t> scratch(same ? 0 : K);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const scalar_t* zrow = logits + i * stride;
      scalar_t* grow = grad ? grad + i * grad_stride : nullptr;
      const int64_t y = target[i];
      if (b[i] == 0 && c[i] == 0 && e[i] == 0) {  // ignored (or zero-weight) row: exact zeros
        lse_out[i] = zy_out[i] = sz_out[i] = 0;
        if (grow) std::memset(static_cast<void*>(grow), 0, sizeof(scalar_t) * K);
        continue;
      }
      if (y < 0 || y >= K) {
        bad = 1;
        continue;
      }
      const acc_t* z;
      acc_t* dst;
      if constexpr (same) {
        z = zrow;
        dst = reinterpret_cast<acc_t*>(grow);
      } else {
        to_acc(zrow, scratch.data(), K);
        z = scratch.data();
        dst = grow ? scratch.data() : nullptr;
      }
      acc_t m, s, zy, sz;
      row_stats<acc_t>(z, K, y, u, dst, m, s, zy, sz);
      const acc_t lse = m + std::log(s);
      lse_out[i] = lse;
      zy_out[i] = zy;
      sz_out[i] = sz;
      if (grow) {
        acc_t a = b[i] + c[i] * U;
        if (zl != 0 && e[i] != 0) a += 2 * zl * e[i] * lse;
        const acc_t A = s > 0 ? scale * a / s : acc_t(0);
        write_grad<scalar_t, acc_t>(dst, grow, K, y, u, A, scale * b[i], scale * c[i]);
      }
    }
  }
  return bad ? -1 : 0;
}

}  // namespace

#define LS_EXPORT(NAME, scalar_t, acc_t)                                                          \
  extern "C" int NAME(const void* logits, int64_t N, int64_t K, int64_t stride,                   \
                      const int64_t* target, const acc_t* b, const acc_t* c, const acc_t* e,      \
                      const acc_t* u, acc_t U, acc_t zl, acc_t scale, acc_t* lse, acc_t* zy,      \
                      acc_t* sz, void* grad, int64_t grad_stride) {                               \
    return fused_ce<scalar_t, acc_t>(static_cast<const scalar_t*>(logits), N, K, stride, target, \
                                     b, c, e, u, U, zl, scale, lse, zy, sz,                       \
                                     static_cast<scalar_t*>(grad), grad_stride);                  \
  }

LS_EXPORT(ls_fused_ce_f32, float, float)
LS_EXPORT(ls_fused_ce_f64, double, double)
LS_EXPORT(ls_fused_ce_bf16, c10::BFloat16, float)
LS_EXPORT(ls_fused_ce_f16, c10::Half, float)

extern "C" int ls_abi_version() { return 1; }
