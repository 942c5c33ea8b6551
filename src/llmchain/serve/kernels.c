/* Hand-written CPU kernels of the serving engine's decode step (built and loaded by serve/kernel.py,
 * cc -O3 -march=native -DHD=<head_dim> -DG=<query heads per kv head>).
 *
 * Decode attention over a bf16 KV cache: one query token per sequence, each over its own slot. Keys
 * are stored in blocks of 64 positions, transposed: (slots, nkv, T/64, HD, 64), so the scores of 64
 * consecutive keys are summed over d in four vector registers from one contiguous 8 KB block; values
 * are (slots, nkv, T, HD). The softmax between the two calls is PyTorch's.
 *
 * add_rms_norm: the residual add and the RMSNorm that follows it, in one pass, writing the bf16 input
 * of the next matmul (on a CPU each separate small op costs more than its arithmetic).
 *
 * Every sum runs in one fixed order per (sequence, head) or per row — d = 0..HD-1 for a score,
 * l = 0..n-1 for an output row, 16 lanes then a fixed tree for a norm — so no result depends on what
 * else is in the batch, and masked positions are never read.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float vf __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
#define W 16       /* floats per vector */
#define NV 4       /* vectors per key block */
#define KB 64      /* keys per block (NV * W) */

static inline vf load_bf16(const uint16_t *p) { /* 16 bf16 -> 16 fp32, exact (bf16 is fp32's top half) */
    vh h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as PyTorch's .to(bfloat16) */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* One new token per sequence into the cache, as bf16: k[b] and v[b] (nkv, HD) fp32, rows `ks` and `vs`
 * floats apart, go to position positions[b] of slot slots[b]. */
void write_tokens(const float *restrict k, int64_t ks, const float *restrict v, int64_t vs,
                  uint16_t *restrict kc, uint16_t *restrict vc, const int64_t *restrict slots,
                  const int64_t *restrict positions, int B, int nkv, int T) {
    for (int b = 0; b < B; b++) {
        int64_t t = positions[b];
        for (int kh = 0; kh < nkv; kh++) {
            int64_t head = (int64_t)slots[b] * nkv + kh;
            uint16_t *kd = kc + (head * T + t / KB * KB) * HD + t % KB; /* block t/64, column t%64 */
            uint16_t *vd = vc + (head * T + t) * HD;
            const float *kb = k + b * ks + kh * HD, *vb = v + b * vs + kh * HD;
            for (int d = 0; d < HD; d++) {
                kd[d * KB] = f32_to_bf16(kb[d]);
                vd[d] = f32_to_bf16(vb[d]);
            }
        }
    }
}

/* scores (B, nkv, G, L) = q (B, nkv, G, HD) . keys 0..lens[b]-1 of slot slots[b]; -inf from lens[b] on.
 * L % 64 == 0 and L <= T. */
void attn_scores(const float *restrict q, const uint16_t *restrict kc, const int64_t *restrict slots,
                 const int64_t *restrict lens, float *restrict scores, int B, int nkv, int T, int L) {
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < nkv; kh++) {
            const float *restrict qh = q + ((int64_t)b * nkv + kh) * G * HD;
            const uint16_t *restrict K = kc + ((int64_t)slots[b] * nkv + kh) * T * HD;
            float *restrict s = scores + ((int64_t)b * nkv + kh) * G * L;
            int n = (int)lens[b];
            for (int l0 = 0; l0 < n; l0 += KB) {
                vf acc[G][NV];
                for (int i = 0; i < G; i++)
                    for (int v = 0; v < NV; v++) acc[i][v] = (vf){0};
                const uint16_t *block = K + (int64_t)l0 * HD; /* (HD, 64) */
                for (int d = 0; d < HD; d++)
                    for (int v = 0; v < NV; v++) {
                        vf k = load_bf16(block + d * KB + v * W);
                        for (int i = 0; i < G; i++) acc[i][v] += qh[i * HD + d] * k;
                    }
                for (int i = 0; i < G; i++) memcpy(s + i * L + l0, acc[i], sizeof acc[i]);
            }
            for (int i = 0; i < G; i++)
                for (int l = n; l < L; l++) s[i * L + l] = -INFINITY;
        }
}

/* out (B, nkv, G, HD) = p (B, nkv, G, L) . values 0..lens[b]-1 of slot slots[b]. */
void attn_values(const float *restrict p, const uint16_t *restrict vc, const int64_t *restrict slots,
                 const int64_t *restrict lens, float *restrict out, int B, int nkv, int T, int L) {
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < nkv; kh++) {
            const uint16_t *restrict V = vc + ((int64_t)slots[b] * nkv + kh) * T * HD;
            const float *restrict ph = p + ((int64_t)b * nkv + kh) * G * L;
            vf o[G][HD / W];
            for (int i = 0; i < G; i++)
                for (int c = 0; c < HD / W; c++) o[i][c] = (vf){0};
            for (int l = 0; l < lens[b]; l++)
                for (int c = 0; c < HD / W; c++) {
                    vf v = load_bf16(V + (int64_t)l * HD + c * W);
                    for (int i = 0; i < G; i++) o[i][c] += ph[i * L + l] * v;
                }
            memcpy(out + ((int64_t)b * nkv + kh) * G * HD, o, sizeof o);
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
