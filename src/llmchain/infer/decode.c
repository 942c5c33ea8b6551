/* The engine's fused decode step (built and loaded by infer/decoder.py, cc -O3 -march=native -fopenmp).
 *
 * One call computes the next-token logits of B decoding sequences — embedding, every layer (RMSNorm,
 * q|k|v, RoPE, the write into the engine's fp32 KV cache, attention, o, gate|up, SiLU, down), the final
 * norm and the LM head — so Python runs once per step instead of ~15 small PyTorch ops per layer, and
 * each weight matrix is read once per step for all B rows. Weights are fp32, bf16 (with AVX512_BF16:
 * `vdpbf16ps` on the activations rounded to bf16, as oneDNN's and llama.cpp's f16 paths round theirs;
 * else converted to fp32 in registers) or int8 (one scale per output channel; the activations are
 * quantized per block of 16 at run time, q8_0-like, and multiplied with AVX-512 VNNI `vpdpbusd`); those two
 * are stored packed, by tiles of 8 columns (see `packed_cols`).
 *
 * Batch invariance: every output (row b, column j) is one dot product summed in one fixed order (16
 * lanes over k, then a fixed tree), whatever B is, whichever tile or thread computes it; a sequence's
 * attention reads only its own positions. So a row's logits are bit-identical alone or among others.
 * Threads split the columns of each matmul (and the (sequence, kv head) pairs of attention): they
 * change who computes an output, never how.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && !defined(LLMCHAIN_GENERIC)
#define USE_VNNI 1
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__) && !defined(LLMCHAIN_GENERIC)
#define USE_BF16DP 1 /* bf16 weights: vdpbf16ps on bf16-rounded activations, 32 products per instruction */
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__) && !defined(LLMCHAIN_GENERIC)
#define USE_AVX2 1 /* AVX2 CPUs (no AVX-512): 8-lane tiles that fit AVX2's 16 vector registers */
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float vf __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
#define W 16 /* floats per vector; every K and head_dim is a multiple of it */
#define QB 16 /* int8: activations share one scale per block of QB values */
#ifndef PF
#define PF 4
#endif

enum { F32 = 0, BF16 = 1, I8 = 2 };

typedef struct {
    const void *w;      /* (n, k): float, bf16 (uint16) or int8 */
    const float *scale; /* int8: (n,) per output channel */
    int n, k;
} Mat;

typedef struct {
    int layers, dim, ffn, vocab, nh, nkv, hd, T, type;
    float eps;
    const float *embed;                  /* (vocab, dim) fp32 */
    const float *cos, *sin;              /* (T, hd) */
    const float *const *norm_attn;       /* per layer (dim,) */
    const float *const *norm_mlp;        /* per layer (dim,) */
    const float *norm_final;             /* (dim,) */
    const Mat *qkv, *o, *gate_up, *down; /* per layer; gate_up: gate rows then up rows */
    const Mat *head;
    float *const *kc, *const *vc;        /* per layer (slots, nkv, T, hd) fp32: the engine's KVCache */
} Model;

const char *decode_isa(void) {
#if defined(USE_VNNI) && defined(USE_BF16DP)
    return "avx512-vnni-bf16";
#elif defined(USE_VNNI)
    return "avx512-vnni";
#elif defined(USE_AVX2)
    return "avx2-fma";
#else
    return "generic";
#endif
}

static inline vf loadf(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline vf load_bf16(const uint16_t *p) { /* 16 bf16 -> 16 fp32, exact */
#ifdef __AVX512F__ /* one widening move: GCC lowers the generic form through 256-bit halves */
    return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#endif
    vh h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}

/* v as it is: the product it holds is rounded here, never fused (-ffp-contract) with a later add */
static inline float rounded(float v) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__("" : "+x"(v));
#else
    __asm__("" : "+r"(v));
#endif
    return v;
}

static inline float hsum(vf v) { /* a fixed tree over the 16 lanes */
    float a[W];
    memcpy(a, &v, sizeof a);
    for (int s = W / 2; s > 0; s /= 2)
        for (int i = 0; i < s; i++) a[i] += a[i + s];
    return a[0];
}

/* The activations of one matmul's input rows: fp32 (ld = k), and for int8 weights their quantized form:
 * q (ld = k) the values, and per 64-value chunk 16 scales (each block's scale over its 4 lanes). */
typedef struct {
    const float *x;
    const int8_t *q;
    const float *qs;
    int k;
} Act; /* (USE_BF16DP: q holds the rows rounded to bf16, ld = k uint16) */

static void quantize_row(const float *restrict x, int k, int8_t *restrict q, float *restrict qs) {
    int chunks = (k + 63) / 64;
    memset(qs, 0, (size_t)chunks * W * sizeof *qs);
    for (int b0 = 0; b0 < k; b0 += QB) {
        float amax = 0.0f;
        for (int i = 0; i < QB; i++) amax = fmaxf(amax, fabsf(x[b0 + i]));
        float s = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int i = 0; i < QB; i++) q[b0 + i] = (int8_t)lrintf(x[b0 + i] * inv);
        int c = b0 / 64, blk = (b0 % 64) / QB;
        for (int l = 0; l < 4; l++) qs[c * W + blk * 4 + l] = s;
    }
}

/* The packed weight layout (USE_BF16DP bf16, USE_VNNI int8): a lone row's matmul is a weight stream from
 * memory, and 8 columns read as 8 row streams k elements apart ran at half of llama.cpp's bandwidth. So the
 * first n / 8 * 8 columns are stored by tiles of 8: per 64-byte block of k (E elements, k padded to a
 * multiple of E with zeros), the 8 columns' blocks one after the other, so a tile reads one sequential
 * stream; the last n % 8 columns follow, row-major (ld = k). Only the addresses change: each output's
 * dot product is the same sequence of operations. No software prefetch: the hardware prefetcher follows
 * one sequential stream (1 KB or 512 B ahead measured no faster on this EPYC). Sets col[c] (the offset
 * of column j0 + c's first block) and *step (the offset between its consecutive blocks). */
int decode_packed(int type) {
#ifdef USE_BF16DP
    if (type == BF16) return 1;
#endif
#ifdef USE_VNNI
    if (type == I8) return 1;
#endif
#ifdef USE_AVX2
    if (type == BF16 || type == I8) return 1;
#endif
    (void)type;
    return 0;
}

static inline void packed_cols(const Mat *m, int E, int j0, int C, int64_t *col, int64_t *step) {
    const int64_t full = m->n / 8 * 8, kp = (m->k + E - 1) / E * E;
    if (j0 < full) {
        for (int c = 0; c < C; c++) col[c] = (int64_t)(j0 + c) / 8 * 8 * kp + (j0 + c) % 8 * E;
        *step = 8 * E;
        return;
    }
    for (int c = 0; c < C; c++) col[c] = full * kp + (int64_t)(j0 + c - full) * m->k;
    *step = E;
}

#ifdef USE_AVX2
/* AVX2 has 16 vector registers of 8 floats: the generic tiles' 16-lane accumulators (two per output)
 * spill there. Here each output has ONE 8-lane accumulator, stepped over k by 8 (int8: by 32, one
 * scale per block of 16 in lanes 0-3 and 4-7), then summed by a fixed tree: every tile shape (1 x 8,
 * 2 x 4, 4 x 2) keeps 8 independent FMA chains and computes an output the same way. bf16 and int8
 * weights are packed (`packed_cols`); fp32 stays row-major. */
static inline float hsum8(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    for (int s = 4; s > 0; s /= 2)
        for (int i = 0; i < s; i++) a[i] += a[i + s];
    return a[0];
}

static inline __m256 load8_bf16(const uint16_t *p) { /* 8 bf16 -> 8 fp32, exact */
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static inline __m256i load32_i8(const int8_t *p, int left) { /* 32 int8, or 16 and zeros (k % 32 == 16) */
    if (left >= 32) return _mm256_loadu_si256((const __m256i *)p);
    return _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128((const __m128i *)p));
}

static inline __attribute__((always_inline)) void tile_avx2(const Mat *m, int type, const Act *a, int b0, int R,
                                                            int j0, int C, float res[4][8]) {
    const int k = m->k;
    __m256 acc[4][8];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    int64_t col[8], step;
    if (type == I8) {
        packed_cols(m, 64, j0, C, col, &step);
        const int chunks = (k + 63) / 64;
        const __m256i ones = _mm256_set1_epi16(1);
        for (int k0 = 0; k0 < k; k0 += 32) {
            const int64_t off = k0 / 64 * step + k0 % 64;
            __m256i w[8];
            for (int c = 0; c < C; c++) w[c] = load32_i8((const int8_t *)m->w + col[c] + off, k - k0);
            for (int r = 0; r < R; r++) {
                __m256i x = load32_i8(a->q + (int64_t)(b0 + r) * k + k0, k - k0), ax = _mm256_abs_epi8(x);
                __m256 s = _mm256_loadu_ps(a->qs + ((int64_t)(b0 + r) * chunks + k0 / 64) * W + (k0 % 64) / 32 * 8);
                for (int c = 0; c < C; c++) { /* |x| . (sign(x) w): vpmaddubsw takes unsigned x signed */
                    __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w[c], x));
                    __m256i d = _mm256_madd_epi16(p, ones); /* lanes 0-3: block k0/16, 4-7: the next */
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc[r][c]);
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) res[r][c] = rounded(hsum8(acc[r][c]) * m->scale[j0 + c]);
        return;
    }
    if (type == BF16) { /* by 64-byte blocks (32 values) of each column, 8 values at a time */
        packed_cols(m, 32, j0, C, col, &step);
        for (int kb = 0; kb < k; kb += 32) {
            const uint16_t *w[8];
            for (int c = 0; c < C; c++) w[c] = (const uint16_t *)m->w + col[c] + kb / 32 * step;
            const int n8 = k - kb < 32 ? (k - kb) / 8 : 4;
            for (int i = 0; i < n8; i++) {
                __m256 x[4];
                for (int r = 0; r < R; r++) x[r] = _mm256_loadu_ps(a->x + (int64_t)(b0 + r) * k + kb + i * 8);
                for (int c = 0; c < C; c++) {
                    __m256 wv = load8_bf16(w[c] + i * 8);
                    for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(x[r], wv, acc[r][c]);
                }
            }
        }
    } else {
        for (int k0 = 0; k0 < k; k0 += 8) {
            __m256 x[4];
            for (int r = 0; r < R; r++) x[r] = _mm256_loadu_ps(a->x + (int64_t)(b0 + r) * k + k0);
            for (int c = 0; c < C; c++) {
                __m256 wv = _mm256_loadu_ps((const float *)m->w + (int64_t)(j0 + c) * k + k0);
                for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(x[r], wv, acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) res[r][c] = hsum8(acc[r][c]);
}
#endif

/* Y[b, j] (+)= row b of the input . row j of the weight, for rows b0..b0+R-1 and columns j0..j0+C-1.
 * Inlined with constant R, C and type: each (row, column) keeps its own accumulators — two for float
 * weights, even and odd 16-value chunks, so that a lone row still has 2C independent FMA chains — and
 * its sum is the same sequence of operations in every variant. */
static inline __attribute__((always_inline)) void tile(const Mat *m, int type, const Act *a, int b0, int R,
                                                       int j0, int C, float *Y, int ldy, int add) {
    float res[4][8];
#ifdef USE_AVX2
    tile_avx2(m, type, a, b0, R, j0, C, res);
#else
    const int k = m->k;
    if (type == I8) {
#ifdef USE_VNNI
        __m512 acc[4][8];
        int64_t col[8], step;
        packed_cols(m, 64, j0, C, col, &step);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
        const int chunks = (k + 63) / 64;
        for (int k0 = 0; k0 < k; k0 += 64) {
            __mmask64 tail = k - k0 >= 64 ? ~0ULL : (1ULL << (k - k0)) - 1;
            __m512i w[8];
            for (int c = 0; c < C; c++)
                w[c] = _mm512_maskz_loadu_epi8(tail, (const int8_t *)m->w + col[c] + k0 / 64 * step);
            for (int r = 0; r < R; r++) {
                __m512i x = _mm512_maskz_loadu_epi8(tail, a->q + (int64_t)(b0 + r) * k + k0);
                __m512i ax = _mm512_abs_epi8(x);
                __mmask64 neg = _mm512_movepi8_mask(x);
                __m512 s = _mm512_loadu_ps(a->qs + ((int64_t)(b0 + r) * chunks + k0 / 64) * W);
                for (int c = 0; c < C; c++) { /* |x| . (sign(x) w): vpdpbusd takes unsigned x signed */
                    __m512i sw = _mm512_mask_sub_epi8(w[c], neg, _mm512_setzero_si512(), w[c]);
                    __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, sw);
                    acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[r][c]);
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) res[r][c] = rounded(hsum((vf)acc[r][c]) * m->scale[j0 + c]);
#else
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                const int8_t *w = (const int8_t *)m->w + (int64_t)(j0 + c) * k;
                const int8_t *x = a->q + (int64_t)(b0 + r) * k;
                const float *qs = a->qs + (int64_t)(b0 + r) * ((k + 63) / 64) * W;
                float acc = 0.0f;
                for (int b = 0; b < k; b += QB) {
                    int32_t d = 0;
                    for (int i = 0; i < QB; i++) d += (int32_t)x[b + i] * w[b + i];
                    acc += (float)d * qs[(b / 64) * W + ((b % 64) / QB) * 4];
                }
                res[r][c] = rounded(acc * m->scale[j0 + c]);
            }
#endif
    }
#ifdef USE_BF16DP
    else if (type == BF16) {
        __m512 acc[2][4][8];
        for (int h = 0; h < 2; h++)
            for (int r = 0; r < R; r++)
                for (int c = 0; c < C; c++) acc[h][r][c] = _mm512_setzero_ps();
        const uint16_t *xb = (const uint16_t *)a->q;
        int64_t col[8], step;
        packed_cols(m, 32, j0, C, col, &step);
        for (int k0 = 0; k0 < k; k0 += 32) {
            const int h = (k0 / 32) & 1;
            __mmask32 tail = k - k0 >= 32 ? ~0U : (1U << (k - k0)) - 1;
            __m512i w[8];
            for (int c = 0; c < C; c++)
                w[c] = _mm512_maskz_loadu_epi16(tail, (const uint16_t *)m->w + col[c] + k0 / 32 * step);
            for (int r = 0; r < R; r++) {
                __m512i x = _mm512_maskz_loadu_epi16(tail, xb + (int64_t)(b0 + r) * k + k0);
                for (int c = 0; c < C; c++) acc[h][r][c] = _mm512_dpbf16_ps(acc[h][r][c], (__m512bh)x, (__m512bh)w[c]);
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) res[r][c] = hsum((vf)(acc[0][r][c] + acc[1][r][c]));
    }
#endif
    else {
        vf acc[2][4][8];
        for (int h = 0; h < 2; h++)
            for (int r = 0; r < R; r++)
                for (int c = 0; c < C; c++) acc[h][r][c] = (vf){0};
        for (int k0 = 0; k0 < k; k0 += W) {
            const int h = (k0 / W) & 1;
            vf w[8];
            for (int c = 0; c < C; c++) {
                w[c] = type == BF16 ? load_bf16((const uint16_t *)m->w + (int64_t)(j0 + c) * k + k0)
                                    : loadf((const float *)m->w + (int64_t)(j0 + c) * k + k0);
                /* the next tile's rows (C rows on): the weights stream from memory once per step, and
                 * C interleaved row streams outrun the hardware prefetcher */
                if (R == 1 && (k0 * (type == BF16 ? 2 : 4)) % 64 == 0)
                    __builtin_prefetch((const char *)m->w + ((int64_t)(j0 + c + PF * C) * k + k0) * (type == BF16 ? 2 : 4));
            }
            for (int r = 0; r < R; r++) {
                vf x = loadf(a->x + (int64_t)(b0 + r) * k + k0);
                for (int c = 0; c < C; c++) acc[h][r][c] += x * w[c];
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) res[r][c] = hsum(acc[0][r][c] + acc[1][r][c]);
    }
#endif
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float *y = Y + (int64_t)(b0 + r) * ldy + j0 + c;
            *y = add ? *y + res[r][c] : res[r][c];
        }
}

/* Columns j..j+CB-1 for every row: 4 rows x 2 columns, then 2 x 4, then 1 x 8 (CB = 8), or x 2 (CB = 2). */
#define COLS(T, CB)                                                                                       \
    for (int b = 0; b < B;) {                                                                             \
        if (B - b >= 4) {                                                                                 \
            for (int c = 0; c < CB; c += 2) tile(m, T, a, b, 4, j + c, 2, Y, ldy, add);                   \
            b += 4;                                                                                       \
        } else if (B - b >= 2) {                                                                          \
            for (int c = 0; c < CB; c += (CB < 4 ? CB : 4)) tile(m, T, a, b, 2, j + c, CB < 4 ? CB : 4, Y, ldy, add); \
            b += 2;                                                                                       \
        } else {                                                                                          \
            tile(m, T, a, b, 1, j, CB, Y, ldy, add);                                                      \
            b += 1;                                                                                       \
        }                                                                                                 \
    }

#define BY_TYPE(CB)                                                                                       \
    if (type == I8) {                                                                                     \
        COLS(I8, CB)                                                                                      \
    } else if (type == BF16) {                                                                            \
        COLS(BF16, CB)                                                                                    \
    } else {                                                                                              \
        COLS(F32, CB)                                                                                     \
    }

/* Y (B, n) (+)= X W^T, the columns shared among the team's threads in blocks of 8 (call from inside a
 * parallel region); the last n % 8 columns (n is even: checked by the loader) by one thread. */
static void matmul(const Mat *m, int type, const Act *a, int B, float *Y, int ldy, int add) {
    const int full = m->n / 8 * 8;
#pragma omp for schedule(static)
    for (int j = 0; j < full; j += 8) {
        BY_TYPE(8)
    }
    if (full == m->n) return; /* the usual case: no `single` and so no second barrier */
#pragma omp single
    for (int j = full; j < m->n; j += 2) {
        BY_TYPE(2)
    }
}

/* The element-wise parts (SiLU, RMSNorm, attention) on vectors of the machine's width: 16 lanes with
 * AVX-512, else 8 (GCC splits 64-byte vectors into two AVX2 halves through the stack, which measured ~40 %
 * of a `tiny` step). Every head_dim, dim and ffn is a multiple of 16, so of VL too. */
#ifdef __AVX512F__
#define VL 16
#else
#define VL 8
#endif
typedef float va __attribute__((vector_size(VL * 4)));
typedef int32_t vai __attribute__((vector_size(VL * 4)));

static inline va loada(const float *p) {
    va v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float hsuma(va v) { /* a fixed tree over the VL lanes: lane i += lane i + s, s = VL/2, ..., 1 */
#if VL == 16
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
#else
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1);
#endif
    return v[0];
}

static inline va exp_le0(va x) { /* exp(x) for x <= 0: Cephes' expf (range reduction, degree-5 polynomial) */
    vai lo = x < -87.0f;
    x = (va)((lo & (vai)((va){0} - 87.0f)) | (~lo & (vai)x));
    vai n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, vai); /* round(x log2 e), x <= 0 */
    va nf = __builtin_convertvector(n, va);
    va r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    va y = 1.9875691500e-4f * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    return (va)((vai)y + ((n) << 23)); /* times 2^n */
}

static void silu_mul(const float *restrict g, const float *restrict u, int n, float *restrict out) {
    for (int i = 0; i < n; i += VL) { /* g sigmoid(g) u, sigmoid from exp(-|g|) <= 1 */
        va gv = loada(g + i), uv = loada(u + i);
        vai neg = gv < 0.0f;
        va e = exp_le0((va)((vai)gv | ((vai){0} + INT32_MIN))); /* -|g|: the sign bit set */
        va num = (va)((neg & (vai)e) | (~neg & (vai)((va){0} + 1.0f)));
        va r = gv * (num / (1.0f + e)) * uv;
        memcpy(out + i, &r, sizeof r);
    }
}

static void rms_norm(const float *restrict x, const float *restrict w, float eps, int d, float *restrict out) {
    va acc = {0};
    for (int i = 0; i < d; i += VL) {
        va v = loada(x + i);
        acc += v * v;
    }
    float r = 1.0f / sqrtf(hsuma(acc) / (float)d + eps);
    for (int i = 0; i < d; i++) out[i] = x[i] * r * w[i];
}

/* softmax(q . K^T) V for the G query heads of one kv head, over positions 0..n-1; q scaled already. */
static void attend(const float *restrict q, const float *restrict K, const float *restrict V, int n, int G,
                   int hd, float *restrict s, float *restrict out) {
    for (int g = 0; g < G; g++) {
        const float *qg = q + g * hd;
        float m = -INFINITY;
        for (int t = 0; t < n; t++) {
            va acc = {0};
            for (int d = 0; d < hd; d += VL) acc += loada(qg + d) * loada(K + (int64_t)t * hd + d);
            s[t] = hsuma(acc);
            m = s[t] > m ? s[t] : m;
        }
        float sum = 0.0f;
        for (int t = 0; t < n; t++) {
            s[t] = expf(s[t] - m);
            sum += s[t];
        }
        float inv = 1.0f / sum;
        for (int d = 0; d < hd; d += VL) {
            va acc = {0};
            for (int t = 0; t < n; t++) acc += s[t] * loada(V + (int64_t)t * hd + d);
            acc *= inv;
            memcpy(out + g * hd + d, &acc, sizeof acc);
        }
    }
}

static void rope(float *restrict x, const float *restrict cos, const float *restrict sin, int hd) {
    int half = hd / 2; /* HF's rotate_half: the first half pairs with the second */
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

static inline void quantize_rows(int type, const float *x, int B, int k, int8_t *q, float *qs) {
#ifdef USE_BF16DP
    if (type == BF16) {
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++)
            for (int i = 0; i < k; i += W) { /* round to nearest even, as vcvtneps2bf16 */
                __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + (int64_t)b * k + i));
                memcpy((uint16_t *)q + (int64_t)b * k + i, &v, sizeof v);
            }
        return;
    }
#endif
    if (type != I8) return;
#pragma omp for schedule(static)
    for (int b = 0; b < B; b++)
        quantize_row(x + (int64_t)b * k, k, q + (int64_t)b * k, qs + (int64_t)b * ((k + 63) / 64) * W);
}

/* logits (B, vocab) of B decoding rows: token tokens[b] at position pos[b] of cache slot slots[b] (its
 * key/value written there; positions 0..pos[b] attended to). Returns 0, or -1 if out of memory. */
int decode_step(const Model *M, int B, const int64_t *tokens, const int64_t *pos, const int64_t *slots,
                float *logits, int threads) {
    const int D = M->dim, F = M->ffn, nh = M->nh, nkv = M->nkv, hd = M->hd, T = M->T, G = nh / nkv;
    const int nqkv = (nh + 2 * nkv) * hd, kmax = 2 * F > nqkv ? 2 * F : nqkv, type = M->type;
    const int qsw = (kmax + 63) / 64 * W;
    float *x = malloc(sizeof(float) * B * D), *h = malloc(sizeof(float) * B * kmax);
    float *qkv = malloc(sizeof(float) * B * nqkv), *att = malloc(sizeof(float) * B * nh * hd);
    float *gu = malloc(sizeof(float) * B * 2 * F), *scores = malloc(sizeof(float) * B * nkv * T);
    int8_t *q = malloc((size_t)B * kmax * 2); /* int8, or bf16 rows */
    float *qs = malloc(sizeof(float) * B * qsw);
    if (!x || !h || !qkv || !att || !gu || !scores || !q || !qs) {
        free(x), free(h), free(qkv), free(att), free(gu), free(scores), free(q), free(qs);
        return -1;
    }
    const float qscale = 1.0f / sqrtf((float)hd);
#pragma omp parallel num_threads(threads)
    {
        Act a = {h, q, qs, D};
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) memcpy(x + (int64_t)b * D, M->embed + tokens[b] * D, sizeof(float) * D);
        for (int l = 0; l < M->layers; l++) {
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) rms_norm(x + (int64_t)b * D, M->norm_attn[l], M->eps, D, h + (int64_t)b * D);
            a.k = D;
            quantize_rows(type, h, B, D, q, qs);
            matmul(&M->qkv[l], type, &a, B, qkv, nqkv, 0);
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) { /* RoPE on q and k, k and v into the cache */
                float *r = qkv + (int64_t)b * nqkv;
                const float *c = M->cos + pos[b] * hd, *s = M->sin + pos[b] * hd;
                for (int i = 0; i < nh + nkv; i++) rope(r + i * hd, c, s, hd);
                for (int i = 0; i < nh * hd; i++) r[i] *= qscale;
                for (int kh = 0; kh < nkv; kh++) {
                    int64_t at = (((int64_t)slots[b] * nkv + kh) * T + pos[b]) * hd;
                    memcpy(M->kc[l] + at, r + (nh + kh) * hd, sizeof(float) * hd);
                    memcpy(M->vc[l] + at, r + (nh + nkv + kh) * hd, sizeof(float) * hd);
                }
            }
#pragma omp for schedule(static)
            for (int bk = 0; bk < B * nkv; bk++) {
                int b = bk / nkv, kh = bk % nkv;
                int64_t head = ((int64_t)slots[b] * nkv + kh) * T * hd;
                attend(qkv + (int64_t)b * nqkv + kh * G * hd, M->kc[l] + head, M->vc[l] + head, (int)pos[b] + 1,
                       G, hd, scores + (int64_t)bk * T, att + (int64_t)b * nh * hd + kh * G * hd);
            }
            Act ao = {att, q, qs, nh * hd};
            quantize_rows(type, att, B, nh * hd, q, qs);
            matmul(&M->o[l], type, &ao, B, x, D, 1);
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) rms_norm(x + (int64_t)b * D, M->norm_mlp[l], M->eps, D, h + (int64_t)b * D);
            a.k = D;
            quantize_rows(type, h, B, D, q, qs);
            matmul(&M->gate_up[l], type, &a, B, gu, 2 * F, 0);
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) { /* SiLU(gate) * up, into h (B, F) */
                const float *g = gu + (int64_t)b * 2 * F, *u = g + F;
                float *o = h + (int64_t)b * F;
                silu_mul(g, u, F, o);
            }
            Act af = {h, q, qs, F};
            quantize_rows(type, h, B, F, q, qs);
            matmul(&M->down[l], type, &af, B, x, D, 1);
        }
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) rms_norm(x + (int64_t)b * D, M->norm_final, M->eps, D, h + (int64_t)b * D);
        a.k = D;
        quantize_rows(type, h, B, D, q, qs);
        matmul(M->head, type, &a, B, logits, M->vocab, 0);
    }
    free(x), free(h), free(qkv), free(att), free(gu), free(scores), free(q), free(qs);
    return 0;
}
