/* Hand-written CPU kernels of the serving engine's decode step (built and loaded by infer/kernels.py,
 * cc -O3 -march=native -DHD=<head_dim> -DG=<query heads per kv head>).
 *
 * Decode attention over a bf16 KV cache: one query token per sequence, each over its own slot. Keys
 * are stored in blocks of 64 positions, transposed: (slots, nkv, T/64, HD, 64), so the scores of 64
 * consecutive keys are summed over d in four vector registers from one contiguous 8 KB block; values
 * are (slots, nkv, T, HD). The softmax runs in between, on the scores of the sequence's own positions.
 *
 * rope_write: RoPE on a step's q and k rows, straight from the bf16 matmul output, and the cache write.
 *
 * argmax_rows: greedy decoding's pick, first index on ties, as torch.argmax.
 *
 * add_rms_norm: the residual add and the RMSNorm that follows it, in one pass, writing the bf16 input
 * of the next matmul (on a CPU each separate small op costs more than its arithmetic).
 *
 * Every sum runs in one fixed order per (sequence, head) or per row — d = 0..HD-1 for a score,
 * l = 0..n-1 for an output row, 16 lanes then a fixed tree for a norm — so no result depends on what
 * else is in the batch, and masked positions are never read.
 */
#include <math.h>
/* -DLLMCHAIN_GENERIC (the loader passes it for LLMCHAIN_KERNELS_GENERIC=1) builds the portable branches
 * even where AVX-512 is there, so the tests can check them on any machine against the same references. */
#if defined(__AVX512F__) && !defined(LLMCHAIN_GENERIC)
#define USE_AVX512 1
#include <immintrin.h>
#endif
#include <stdint.h>
#include <string.h>

typedef float vf __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
#define W 16       /* floats per vector */
#define NV 4       /* vectors per key block */
#define KB 64      /* keys per block (NV * W) */

/* Which branches this build took: "avx512" or "generic" (the loader's CpuKernels.isa). */
const char *kernels_isa(void) {
#ifdef USE_AVX512
    return "avx512";
#else
    return "generic";
#endif
}

static inline vf load_bf16(const uint16_t *p) { /* 16 bf16 -> 16 fp32, exact (bf16 is fp32's top half) */
#ifdef USE_AVX512 /* one widening move: GCC lowers the generic form below through 256-bit halves */
    return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#else
    vh h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
#endif
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as PyTorch's .to(bfloat16) */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* The q|k|v rows of one step, bf16 as the fused matmul gives them: row r is (nh + 2 nkv, HD), at position
 * positions[r] of slot slots[r]. Its q and k heads are rotated by RoPE (HF's rotate_half: d pairs with
 * d + HD/2; cos/sin tables (max_len, HD)); q goes to q_out (N, nh, HD) fp32, times qscale for rows
 * r < nscaled (decoding rows: the attention kernel takes q scaled); k and v go into the cache as bf16
 * (v's bits unchanged) and, when k_out is not NULL, to k_out / v_out (N, nkv, HD) fp32 (a prompt's
 * attention reads them). One pass instead of a float cast, four RoPE ops, a scale and a cache write. */
void rope_write(const uint16_t *restrict qkv, const float *restrict cos, const float *restrict sin,
                const int64_t *restrict positions, const int64_t *restrict slots, float qscale, int nscaled,
                float *restrict q_out, float *restrict k_out, float *restrict v_out, uint16_t *restrict kc,
                uint16_t *restrict vc, int N, int nh, int nkv, int T) {
    const int H = nh + 2 * nkv, half = HD / 2;
    for (int r = 0; r < N; r++) {
        const uint16_t *restrict row = qkv + (int64_t)r * H * HD;
        const int64_t t = positions[r];
        const float *restrict c = cos + t * HD, *restrict s = sin + t * HD;
        for (int h = 0; h < nh + nkv; h++) {
            const uint16_t *restrict x = row + h * HD;
            float xf[HD], y[HD];
            for (int d = 0; d < HD; d += W) {
                vf v = load_bf16(x + d);
                memcpy(xf + d, &v, sizeof v);
            }
            for (int d = 0; d < half; d++) { /* two straight loops: they vectorise */
                y[d] = xf[d] * c[d] - xf[d + half] * s[d];
                y[d + half] = xf[d + half] * c[d + half] + xf[d] * s[d + half];
            }
            if (h < nh) {
                float f = r < nscaled ? qscale : 1.0f, *restrict q = q_out + ((int64_t)r * nh + h) * HD;
                for (int d = 0; d < HD; d++) q[d] = y[d] * f;
                continue;
            }
            const int kh = h - nh;
            const int64_t head = (int64_t)slots[r] * nkv + kh;
            uint16_t *restrict kd = kc + (head * T + t / KB * KB) * HD + t % KB; /* block t/64, column t%64 */
            for (int d = 0; d < HD; d++) kd[d * KB] = f32_to_bf16(y[d]);
            if (k_out) memcpy(k_out + ((int64_t)r * nkv + kh) * HD, y, sizeof y);
        }
        for (int kh = 0; kh < nkv; kh++) {
            const uint16_t *restrict x = row + (nh + nkv + kh) * HD;
            const int64_t head = (int64_t)slots[r] * nkv + kh;
            memcpy(vc + (head * T + t) * HD, x, HD * sizeof *x);
            if (v_out)
                for (int d = 0; d < HD; d += W) {
                    vf v = load_bf16(x + d);
                    memcpy(v_out + ((int64_t)r * nkv + kh) * HD + d, &v, sizeof v);
                }
        }
    }
}

static inline vf exp_le0(vf x) { /* exp(x) for x <= 0: Cephes' expf (range reduction, degree-5 polynomial) */
#ifdef USE_AVX512
    __m512 v = _mm512_max_ps((__m512)x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(y, r), r, r), _mm512_set1_ps(1.0f));
    return (vf)_mm512_scalef_ps(y, n);
#else
    vf out;
    for (int j = 0; j < W; j++) out[j] = expf(x[j]);
    return out;
#endif
}

static inline vf vmax(vf a, vf b, int first) { /* lane-wise max; `first`: just b */
    if (first) return b;
#ifdef USE_AVX512
    return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#else
    for (int j = 0; j < W; j++) a[j] = b[j] > a[j] ? b[j] : a[j];
    return a;
#endif
}

/* out (B, nkv, G, HD) = softmax(q (B, nkv, G, HD) . K^T) V over positions 0..lens[b]-1 of slot slots[b].
 * q is scaled by 1/sqrt(HD) already; scratch holds G * T floats. */
void decode_attention(const float *restrict q, const uint16_t *restrict kc, const uint16_t *restrict vc,
                      const int64_t *restrict slots, const int64_t *restrict lens, float *restrict scratch,
                      float *restrict out, int B, int nkv, int T) {
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < nkv; kh++) {
            const float *restrict qh = q + ((int64_t)b * nkv + kh) * G * HD;
            int64_t head = (int64_t)slots[b] * nkv + kh;
            const uint16_t *restrict K = kc + head * T * HD, *restrict V = vc + head * T * HD;
            int n = (int)lens[b];
            /* the next (sequence, head)'s keys and values, fetched while this one computes: each is a
             * separate ~10-30 KB stream, too short for the hardware prefetcher to get going */
            int nb_ = kh + 1 < nkv ? b : b + 1, nkh = kh + 1 < nkv ? kh + 1 : 0;
            int64_t nhead = nb_ < B ? (int64_t)slots[nb_] * nkv + nkh : head;
            const uint16_t *Kn = kc + nhead * T * HD, *Vn = vc + nhead * T * HD;
            /* scores, 64 keys at a time: 4 vectors per query head in flight, so the FMA chains overlap */
            for (int l0 = 0; l0 < n; l0 += KB) {
                vf acc[G][NV];
                for (int i = 0; i < G; i++)
                    for (int v = 0; v < NV; v++) acc[i][v] = (vf){0};
                const uint16_t *block = K + (int64_t)l0 * HD; /* (HD, 64) */
                for (int d = 0; d < HD; d++) {
                    __builtin_prefetch(Kn + (int64_t)l0 * HD + d * KB);
                    __builtin_prefetch(Kn + (int64_t)l0 * HD + d * KB + 32);
                    for (int v = 0; v < NV; v++) {
                        vf k = load_bf16(block + d * KB + v * W);
                        for (int i = 0; i < G; i++) acc[i][v] += qh[i * HD + d] * k;
                    }
                }
                for (int i = 0; i < G; i++) memcpy(scratch + i * T + l0, acc[i], sizeof acc[i]);
            }
            /* softmax numerators e = exp(s - max) over l < n; the division waits for the output */
            float inv[G];
            int full = n / W * W; /* max and sum: 16 lanes over whole vectors, then the tail, then the lanes */
            for (int i = 0; i < G; i++) {
                float *restrict s = scratch + i * T, m = -INFINITY, sum = 0.0f, lanes[W];
                vf acc = {0}, x;
                for (int l0 = 0; l0 < full; l0 += W) {
                    memcpy(&x, s + l0, sizeof x);
                    acc = vmax(acc, x, l0 == 0);
                }
                memcpy(lanes, &acc, sizeof lanes);
                for (int j = 0; j < (full ? W : 0); j++) m = lanes[j] > m ? lanes[j] : m;
                for (int l = full; l < n; l++) m = s[l] > m ? s[l] : m;
                acc = (vf){0};
                for (int l0 = 0; l0 < n; l0 += W) {
                    memcpy(&x, s + l0, sizeof x);
                    x = exp_le0(x - m); /* lanes past n: whatever they hold, never read below */
                    memcpy(s + l0, &x, sizeof x);
                    if (l0 < full) acc += x;
                }
                for (int l = full; l < n; l++) sum += s[l];
                memcpy(lanes, &acc, sizeof lanes);
                for (int j = 0; j < W; j++) sum += lanes[j];
                inv[i] = 1.0f / sum;
            }
            vf o[G][HD / W];
            for (int i = 0; i < G; i++)
                for (int c = 0; c < HD / W; c++) o[i][c] = (vf){0};
            for (int l = 0; l < n; l++) {
                for (int c = 0; c < HD; c += 32) __builtin_prefetch(Vn + (int64_t)l * HD + c);
                for (int c = 0; c < HD / W; c++) {
                    vf v = load_bf16(V + (int64_t)l * HD + c * W);
                    for (int i = 0; i < G; i++) o[i][c] += scratch[i * T + l] * v;
                }
            }
            float *restrict oh = out + ((int64_t)b * nkv + kh) * G * HD;
            for (int i = 0; i < G; i++)
                for (int c = 0; c < HD / W; c++) {
                    vf r = o[i][c] * inv[i];
                    memcpy(oh + i * HD + c * W, &r, sizeof r);
                }
        }
}

/* out[r] = the index of the largest of x[r, 0..cols-1] — the first on ties; the first NaN if there is
 * one — as torch.argmax gives it (greedy decoding: PyTorch's argmax took ~90 us for 16 x 4096 here). */
void argmax_rows(const float *restrict x, int rows, int cols, int64_t *restrict out) {
    const int full = cols / W * W;
    for (int r = 0; r < rows; r++) {
        const float *restrict row = x + (int64_t)r * cols;
        vf acc = {0}, v;
        int nan = 0;
        for (int c = 0; c < full; c += W) {
            memcpy(&v, row + c, sizeof v);
            acc = vmax(acc, v, c == 0);
            vu isnan = (vu)(v != v);
            for (int j = 0; j < W; j++) nan |= (int)isnan[j];
        }
        float m = -INFINITY, lanes[W];
        memcpy(lanes, &acc, sizeof lanes);
        for (int j = 0; j < (full ? W : 0); j++) m = lanes[j] > m ? lanes[j] : m;
        for (int c = full; c < cols; c++) {
            nan |= row[c] != row[c];
            m = row[c] > m ? row[c] : m;
        }
        int64_t best = 0;
        for (int c = 0; c < cols; c++)
            if (nan ? row[c] != row[c] : row[c] == m) {
                best = c;
                break;
            }
        out[r] = best;
    }
}

/* Per row r of x (rows, D), fp32, updated in place: x += y (bf16, or NULL for none); then
 * out = bf16(x * rsqrt(mean(x^2) + eps) * w). D % 16 == 0. */
void add_rms_norm(float *restrict x, const uint16_t *restrict y, const float *restrict w, float eps,
                  uint16_t *restrict out, int rows, int D) {
    for (int r = 0; r < rows; r++) {
        float *restrict xr = x + (int64_t)r * D;
        vf acc = {0};
        for (int c = 0; c < D; c += W) {
            vf v;
            memcpy(&v, xr + c, sizeof v);
            if (y) {
                v += load_bf16(y + (int64_t)r * D + c);
                memcpy(xr + c, &v, sizeof v);
            }
            acc += v * v;
        }
        float lanes[W], ss = 0.0f;
        memcpy(lanes, &acc, sizeof lanes);
        for (int j = 0; j < W; j++) ss += lanes[j];
        float inv = 1.0f / sqrtf(ss / (float)D + eps);
        uint16_t *restrict o = out + (int64_t)r * D;
        for (int c = 0; c < D; c++) o[c] = f32_to_bf16(xr[c] * inv * w[c]);
    }
}
