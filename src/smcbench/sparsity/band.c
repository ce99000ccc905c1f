/* The exact global cut's two passes (sparsity/allocation.py) over a chunk of float32 scores, compiled because in
 * torch the first took six whole-chunk operations (two comparisons, two counts, an xor, a masked select) and most
 * of the cut's time. Both split the chunk over `threads` OpenMP threads. With `absval` the chunk is the weights
 * themselves and the score is |x| (a magnitude score), taken as it is read: no score chunk is written and read
 * back; `kept` (optional, one byte a weight) marks weights already pruned, which score -inf. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define BLOCK 16
#define MAX_THREADS 64

/* A block's scores. */
static inline void load(const float *s, const uint8_t *kept, int absval, int64_t m, float *x) {
    for (int64_t j = 0; j < m; j++) x[j] = absval ? fabsf(s[j]) : s[j];
    if (kept)
        for (int64_t j = 0; j < m; j++) x[j] = kept[j] ? x[j] : -INFINITY;
}

#ifdef __AVX2__
/* Left-packing 8 floats by a comparison mask: PACK[bits] lists the lanes whose bit is set, in order, so one permute
 * and one store append a group's band values. */
static int32_t PACK[256][8];

__attribute__((constructor)) static void init_pack(void) {
    for (int bits = 0; bits < 256; bits++) {
        int k = 0;
        for (int j = 0; j < 8; j++)
            if (bits >> j & 1) PACK[bits][k++] = j;
        while (k < 8) PACK[bits][k++] = 0;
    }
}

/* Eight scores at a time: three comparisons, their bit masks counted with popcount, the band values left-packed
 * (about 3x the compiler's vectorisation of the scalar loop below, measured on AVX2: the copy of the ~1 % band
 * values was a branch per value in a block of 16). Same counts and the same band, in order. */
static void band_range(const float *s, const uint8_t *kept, int absval, int64_t n, float lo, float hi, float *band,
                       int64_t room, int64_t *out) {
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), ninf = _mm256_set1_ps(-INFINITY);
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    int64_t below = 0, inside = 0, nan = 0, b = 0;
    for (; b + 8 <= n; b += 8) {
        __m256 v = _mm256_loadu_ps(s + b);
        if (absval) v = _mm256_and_ps(v, magnitude);
        if (kept) {
            __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(kept + b)));
            v = _mm256_blendv_ps(v, ninf, _mm256_castsi256_ps(_mm256_cmpeq_epi32(k, _mm256_setzero_si256())));
        }
        below += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(v, vlo, _CMP_LT_OQ)));
        nan += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
        int in = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(v, vlo, _CMP_GE_OQ), _mm256_cmp_ps(v, vhi, _CMP_LE_OQ)));
        if (in) {
            if (inside + 8 <= room) {
                __m256i order = _mm256_loadu_si256((const __m256i *)PACK[in]);
                _mm256_storeu_ps(band + inside, _mm256_permutevar8x32_ps(v, order));
                inside += __builtin_popcount(in);
            } else {  /* the room's last values: one at a time */
                float x[8];
                _mm256_storeu_ps(x, v);
                for (int j = 0; j < 8; j++)
                    if (in >> j & 1) {
                        if (inside < room) band[inside] = x[j];
                        inside++;
                    }
            }
        }
    }
    for (; b < n; b++) {
        float x = absval ? fabsf(s[b]) : s[b];
        if (kept && !kept[b]) x = -INFINITY;
        below += x < lo;
        nan += x != x;
        if ((x >= lo) & (x <= hi)) {
            if (inside < room) band[inside] = x;
            inside++;
        }
    }
    out[0] = below;
    out[1] = inside;
    out[2] = nan;
}
#else
/* Counts in blocks of 16 (a loop the compiler vectorises); the rare block holding band values (~1 % of scores
 * are) copies them in a second, scalar loop. No branch depends on the half of the scores below lo. */
static void band_range(const float *s, const uint8_t *kept, int absval, int64_t n, float lo, float hi, float *band,
                       int64_t room, int64_t *out) {
    int64_t below = 0, inside = 0, nan = 0;
    float x[BLOCK];
    for (int64_t b = 0; b < n; b += BLOCK) {
        int64_t m = n - b < BLOCK ? n - b : BLOCK;
        load(s + b, kept ? kept + b : 0, absval, m, x);
        int32_t lt = 0, in = 0, bad = 0;
        for (int64_t j = 0; j < m; j++) {
            lt += x[j] < lo;
            bad += x[j] != x[j];
            in += (x[j] >= lo) & (x[j] <= hi);
        }
        below += lt;
        nan += bad;
        if (in) {
            for (int64_t j = 0; j < m; j++) {
                if ((x[j] >= lo) & (x[j] <= hi)) {
                    if (inside < room) band[inside] = x[j];
                    inside++;
                }
            }
        }
    }
    out[0] = below;
    out[1] = inside;
    out[2] = nan;
}
#endif

/* How many scores are below lo, how many lie in [lo, hi] (copied to the front of band, in order, when they fit in
 * `room`), how many are NaN. Each thread fills its share of the room; the shares are then moved together.
 * Returns the number copied, or -1 when a thread's share had no room (the counts are complete either way). */
int64_t smc_band(const float *s, const uint8_t *kept, int absval, int64_t n, float lo, float hi, float *band,
                 int64_t room, int64_t *counts, int threads) {
    int nt = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    if (n < 65536) nt = 1;
    int64_t share = room / nt, parts[MAX_THREADS][3];
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
        int64_t a = n * t / nt, b = n * (t + 1) / nt;
        band_range(s + a, kept ? kept + a : 0, absval, b - a, lo, hi, band + share * t, share, parts[t]);
    }
    int64_t below = 0, inside = 0, nan = 0, fits = 1;
    for (int t = 0; t < nt; t++) {
        below += parts[t][0];
        nan += parts[t][2];
        if (parts[t][1] > share) fits = 0;
        else if (fits && share * t != inside) memmove(band + inside, band + share * t, parts[t][1] * sizeof(float));
        inside += parts[t][1];
    }
    counts[0] = below;
    counts[1] = inside;
    counts[2] = nan;
    return fits ? inside : -1;
}

/* The second pass: clear the mask (bool, one byte each) where the score is below the threshold (NaN too). A
 * weight already pruned needs no -inf here: its mask byte is 0 and stays 0. */
void smc_keep(const float *s, int absval, int64_t n, float threshold, uint8_t *mask, int threads) {
    int nt = threads < 1 ? 1 : threads;
    if (n < 65536) nt = 1;
    if (absval) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; i++) mask[i] &= fabsf(s[i]) >= threshold;
    } else {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; i++) mask[i] &= s[i] >= threshold;
    }
}
