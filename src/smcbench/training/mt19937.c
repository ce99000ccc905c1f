/* torch's CPU mt19937 stream, drawn faster: the twist over a whole buffer at once (vectorisable: each word depends
   on words 227 and more before it), and the tempering and bernoulli comparison over independent chunks, which
   the caller runs on several threads. Called through ctypes by training/dropout.py. */
#include <stdint.h>

#define MT_N 624
#define MT_M 397

/* x[0, 624) holds the engine's state; fill x[624, total) with the untempered words of the following states,
   as mt19937 regenerates its state block after block: x[i] from x[i - 624], x[i - 623] and x[i - 227]. */
void smc_mt_extend(uint32_t *x, int64_t total) {
    for (int64_t start = MT_N; start < total; start += MT_N - MT_M) {
        /* a run of 227: every word it reads lies before it, so the compiler may vectorise the run */
        int64_t end = start + (MT_N - MT_M) < total ? start + (MT_N - MT_M) : total;
        for (int64_t i = start; i < end; i++) {
            uint32_t y = (x[i - MT_N] & 0x80000000u) | (x[i - MT_N + 1] & 0x7fffffffu);
            x[i] = x[i - (MT_N - MT_M)] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
    }
}

static inline uint32_t temper(uint32_t y) {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* torch's bernoulli_(p) of a double p, draw j from the untempered words w[2j] (high) and w[2j + 1] (low): the
   53 low bits of their 64-bit value, over 2^53, below p; i.e. that value below threshold = ceil(p * 2^53). */
static inline int keeps(const uint32_t *w, int64_t j, uint64_t threshold) {
    uint64_t v = ((uint64_t)(temper(w[2 * j]) & 0x1fffffu) << 32) | temper(w[2 * j + 1]);
    return v < threshold;
}

void smc_mt_bernoulli_f32(const uint32_t *w, int64_t n, uint64_t threshold, float *out) {
    for (int64_t j = 0; j < n; j++) out[j] = keeps(w, j, threshold) ? 1.0f : 0.0f;
}

void smc_mt_bernoulli_f64(const uint32_t *w, int64_t n, uint64_t threshold, double *out) {
    for (int64_t j = 0; j < n; j++) out[j] = keeps(w, j, threshold) ? 1.0 : 0.0;
}
