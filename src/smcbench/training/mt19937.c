/* torch's CPU mt19937 stream, drawn faster than torch's serial kernel: the state regenerated 624 words at a time
   with vectorisable loops (each word depends on words 227 and more before it), and the words tempered and turned
   into bernoulli draws in tiles that stay in the L1 cache. Called through ctypes by training/dropout.py. */
#include <stdint.h>

#define MT_N 624
#define MT_M 397
#define TILE 2048 /* draws a tile: 16 KB of words */

static inline uint32_t twisted(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t y = (a & 0x80000000u) | (b & 0x7fffffffu);
    return c ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
}

/* mt19937's next state, in place, as torch's engine computes it */
static void twist(uint32_t *mt) {
    for (int k = 0; k < MT_N - MT_M; k++) mt[k] = twisted(mt[k], mt[k + 1], mt[k + MT_M]);
    for (int k = MT_N - MT_M; k < MT_N - 1; k++) mt[k] = twisted(mt[k], mt[k + 1], mt[k - (MT_N - MT_M)]);
    mt[MT_N - 1] = twisted(mt[MT_N - 1], mt[0], mt[MT_M - 1]);
}

static inline uint32_t temper(uint32_t y) {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* The next `count` words of the engine (state mt, `*pos` of its words used; 624: all, twist first), tempered. */
static void words(uint32_t *mt, int64_t *pos, int64_t count, uint32_t *w) {
    for (int64_t got = 0; got < count;) {
        if (*pos == MT_N) {
            twist(mt);
            *pos = 0;
        }
        int64_t take = MT_N - *pos < count - got ? MT_N - *pos : count - got;
        const uint32_t *from = mt + *pos;
        for (int64_t k = 0; k < take; k++) w[got + k] = temper(from[k]);
        got += take;
        *pos += take;
    }
}

/* torch's bernoulli_(p) of a double p: draw j takes two words, the first the high half of a 64-bit value, and
   keeps where its 53 low bits, over 2^53, are below p: the value below threshold = ceil(p * 2^53). A kept draw is
   written as `kept` (1, or what torch's division of 1 by the keep rate gives: dropout's next step in the same
   pass), a dropped one as 0. The state (mt, with pos of its words used) is advanced in place; returns the new
   pos. */
#define BERNOULLI(name, type)                                                                                   \
    int64_t name(uint32_t *mt, int64_t pos, int64_t n, uint64_t threshold, double kept, type *out) {           \
        const type one = (type)kept;                                                                            \
        uint32_t w[2 * TILE];                                                                                   \
        for (int64_t j = 0; j < n; j += TILE) {                                                                 \
            int64_t m = n - j < TILE ? n - j : TILE;                                                            \
            words(mt, &pos, 2 * m, w);                                                                          \
            for (int64_t k = 0; k < m; k++) {                                                                   \
                uint64_t v = ((uint64_t)(w[2 * k] & 0x1fffffu) << 32) | w[2 * k + 1];                           \
                out[j + k] = v < threshold ? one : (type)0;                                                     \
            }                                                                                                   \
        }                                                                                                       \
        return pos;                                                                                             \
    }

BERNOULLI(smc_mt_bernoulli_f32, float)
BERNOULLI(smc_mt_bernoulli_f64, double)
