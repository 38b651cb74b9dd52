/* ==== sbnnumba C runtime: the kernels of a packed binary network ====================================
 *
 * Layout (as sbnnumba.bitpack): a {-1, +1} vector is packed into uint64_t words, bit i % 64 of word
 * i / 64 is element i, a SET bit means -1, padding bits are 0. Feature maps are packed channels last:
 * (H, W, ceil(C/64)) words. Real arrays (inputs, float stages' outputs, the head) use the float
 * network's layout: (N) or (C, H, W).
 *
 * Every stage computes a pre-threshold value per unit and keeps the unit's sign:
 *     integer stages (binary, bit-plane): state = +1 iff value >= t   (flip: +1 iff value < t)
 *     float stages:                       state = +1 iff value >= t   (flip: +1 iff value <= t)
 * Each section below is compiled only when the generated model needs it (SBN_NEED_*), so that an
 * unused static function never warns. */

/* -- popcount: the compiler's builtin (one instruction with -mpopcnt / -march=native), else SWAR -- */
#if SBN_NEED_POPCOUNT
#if (defined(__GNUC__) || defined(__clang__)) && !defined(SBN_PORTABLE_POPCOUNT)
static int sbn_popcount(uint64_t x)
{
    return __builtin_popcountll(x);
}
#else
static int sbn_popcount(uint64_t x)
{
    /* Portable C99 (Hacker's Delight, fig. 5-2): bit counts of 2, 4, 8 bits, then summed by a multiply. */
    x = x - ((x >> 1) & 0x5555555555555555u);
    x = (x & 0x3333333333333333u) + ((x >> 2) & 0x3333333333333333u);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fu;
    return (int)((x * 0x0101010101010101u) >> 56);
}
#endif
#endif

/* -- packed output words: clear, then set bit i for every unit whose state is -1 -- */
static void sbn_clear(uint64_t *words, int n_words)
{
    int i;
    for (i = 0; i < n_words; i++)
        words[i] = 0;
}

static void sbn_set_minus(uint64_t *words, int i)
{
    words[i >> 6] |= (uint64_t)1 << (i & 63);
}

#if SBN_NEED_INT_THRESHOLD
/* -1 state of an integer stage: value < t, or value >= t when flipped */
static int sbn_int_minus(int32_t value, int32_t t, uint8_t flip)
{
    return (value < t) != (flip != 0);
}
#endif

#if SBN_NEED_REAL_THRESHOLD
/* -1 state of a float stage: y < t, or y > t when flipped (+-INFINITY for constant units) */
static int sbn_real_minus(sbn_real y, sbn_real t, uint8_t flip)
{
    return flip ? (y > t) : (y < t);
}
#endif

#if SBN_NEED_CONV
/* Geometry of one convolution (cross-correlation with zero padding) */
typedef struct {
    int c_in, height, width;          /* input map (C_in, H, W) */
    int c_out, out_height, out_width; /* output map (C_out, H_out, W_out) */
    int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
} sbn_conv;

/* Taps of output row/column o that fall inside the input: first and one-past-last kernel offsets */
static void sbn_tap_range(int o, int stride, int pad, int kernel, int size, int *first, int *last)
{
    int start = o * stride - pad;
    *first = start < 0 ? -start : 0;
    *last = start + kernel > size ? size - start : kernel;
}
#endif

/* ---- binary stages: XNOR-popcount, dot = k - 2 popcount(x XOR w) ------------------------------- */
#if SBN_NEED_BINARY_DENSE
/* in: n_words packed words; w: (n_out, n_words); k: true length (padding pairs agree and count +1
 * each, already folded into t). pre (n_out) receives the integer dot products if not NULL. */
static void sbn_binary_dense(const uint64_t *in, int n_words, int k, const uint64_t *w, int n_out,
                             const int32_t *t, const uint8_t *flip, uint64_t *out, int32_t *pre)
{
    int j, i;
    sbn_clear(out, (n_out + 63) / 64);
    for (j = 0; j < n_out; j++) {
        const uint64_t *row = w + (long)j * n_words;
        int count = 0;
        int32_t dot;
        for (i = 0; i < n_words; i++)
            count += sbn_popcount(in[i] ^ row[i]);
        dot = (int32_t)(k - 2 * count);
        if (pre)
            pre[j] = dot;
        if (sbn_int_minus(dot, t[j], flip[j]))
            sbn_set_minus(out, j);
    }
}
#endif

#if SBN_NEED_BINARY_CONV
/* in: (H, W, cw) words; w: (C_out, kh, kw, cw) words, cw = ceil(C_in/64). Padded taps add 0, as in
 * the float network: value = (taps inside) * C_in - 2 popcount over them. out: (H_out, W_out,
 * ceil(C_out/64)) words; pre (C_out, H_out, W_out) if not NULL. */
static void sbn_binary_conv(const uint64_t *in, const sbn_conv *g, const uint64_t *w, const int32_t *t,
                            const uint8_t *flip, uint64_t *out, int32_t *pre)
{
    int cw = (g->c_in + 63) / 64, ow = (g->c_out + 63) / 64;
    int oy, ox, co, dy, dx, i;
    for (oy = 0; oy < g->out_height; oy++) {
        int dy0, dy1;
        sbn_tap_range(oy, g->stride_h, g->pad_h, g->kernel_h, g->height, &dy0, &dy1);
        for (ox = 0; ox < g->out_width; ox++) {
            int dx0, dx1, taps;
            uint64_t *dst = out + ((long)oy * g->out_width + ox) * ow;
            sbn_tap_range(ox, g->stride_w, g->pad_w, g->kernel_w, g->width, &dx0, &dx1);
            taps = (dy1 - dy0) * (dx1 - dx0);
            sbn_clear(dst, ow);
            for (co = 0; co < g->c_out; co++) {
                int count = 0;
                int32_t value;
                for (dy = dy0; dy < dy1; dy++) {
                    int iy = oy * g->stride_h - g->pad_h + dy;
                    for (dx = dx0; dx < dx1; dx++) {
                        int ix = ox * g->stride_w - g->pad_w + dx;
                        const uint64_t *px = in + ((long)iy * g->width + ix) * cw;
                        const uint64_t *pw = w + (((long)co * g->kernel_h + dy) * g->kernel_w + dx) * cw;
                        for (i = 0; i < cw; i++)
                            count += sbn_popcount(px[i] ^ pw[i]);
                    }
                }
                value = (int32_t)(taps * g->c_in - 2 * count);
                if (pre)
                    pre[((long)co * g->out_height + oy) * g->out_width + ox] = value;
                if (sbn_int_minus(value, t[co], flip[co]))
                    sbn_set_minus(dst, co);
            }
        }
    }
}
#endif

/* ---- bit-plane first stage: exact integer z = sum_i q_i w_i of codes q in [0, 2^bits) ----------- */
#if SBN_NEED_BITPLANE
/* planes (n_words, 8): bit i % 64 of planes[8 (i / 64) + b] is bit b of q_i. The 8 planes of a word lie
 * together (planes b >= bits stay 0), so that the product's inner loop has a fixed length of 8, which
 * compilers turn into one vector popcount where the target has one. */
static int sbn_planes_from_codes(const uint8_t *q, int k, int bits, uint64_t *planes)
{
    int i, b;
    sbn_clear(planes, 8 * ((k + 63) / 64));
    for (i = 0; i < k; i++) {
        if (q[i] >> bits)
            return -1; /* code out of range */
        for (b = 0; b < bits; b++)
            planes[8 * (i >> 6) + b] |= (uint64_t)((q[i] >> b) & 1) << (i & 63);
    }
    return 0;
}

/* Real inputs on the grid x = real(scale * q) (product in double, rounded once), as
 * sbnnumba.bitpack.pack_planes: q = round(clamp(x * inv_scale, 0, 2^bits - 1)), accepted iff
 * x == real(scale * q). Returns -1 for an input off the grid (also NaN, inf). */
static int sbn_planes_from_reals(const sbn_real *x, int k, int bits, double scale, sbn_real inv_scale,
                                 uint64_t *planes)
{
    int i, b;
    sbn_real top = (sbn_real)((1 << bits) - 1);
    sbn_clear(planes, 8 * ((k + 63) / 64));
    for (i = 0; i < k; i++) {
        sbn_real v = x[i], s = v * inv_scale;
        int q;
        double on_grid;
        if (!(s > 0))
            s = 0;
        if (!(s < top))
            s = top;
        q = (int)((double)s + 0.5);
        on_grid = scale * (double)q; /* the cast below rounds once more, to sbn_real */
        if ((sbn_real)on_grid != v)
            return -1;
        for (b = 0; b < bits; b++)
            planes[8 * (i >> 6) + b] |= (uint64_t)((q >> b) & 1) << (i & 63);
    }
    return 0;
}

/* z_j = sum_b 2^b (popcount(q_b) - 2 popcount(q_b AND W_j)); W bit set = weight -1 */
static void sbn_bitplane_dense(const uint64_t *planes, int k, const uint64_t *w, int n_out, const int32_t *t,
                               const uint8_t *flip, uint64_t *out, int32_t *pre)
{
    int n_words = (k + 63) / 64, j, b, i;
    int32_t ones[8];
    for (b = 0; b < 8; b++) {
        ones[b] = 0;
        for (i = 0; i < n_words; i++)
            ones[b] += sbn_popcount(planes[8 * i + b]);
    }
    sbn_clear(out, (n_out + 63) / 64);
    for (j = 0; j < n_out; j++) {
        const uint64_t *row = w + (long)j * n_words;
        uint64_t count[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int32_t z = 0;
        for (i = 0; i < n_words; i++)
            for (b = 0; b < 8; b++)
                count[b] += (uint64_t)sbn_popcount(planes[8 * i + b] & row[i]);
        for (b = 0; b < 8; b++)
            z += (ones[b] - 2 * (int32_t)count[b]) * ((int32_t)1 << b);
        if (pre)
            pre[j] = z;
        if (sbn_int_minus(z, t[j], flip[j]))
            sbn_set_minus(out, j);
    }
}
#endif

/* ---- float stages and the head: the float network's products, summed in its reduction order ------ */
#if SBN_NEED_FINITE
/* 1 iff every x_i is finite (the packed network rejects NaN and inf inputs) */
static int sbn_all_finite(const sbn_real *x, int n)
{
    int i;
    for (i = 0; i < n; i++)
        if (!(x[i] - x[i] == 0))
            return 0;
    return 1;
}
#endif

#if SBN_NEED_UNPACK_DENSE
/* +-1 reals (n) from packed words */
static void sbn_unpack_dense(const uint64_t *words, int n, sbn_real *x)
{
    int i;
    for (i = 0; i < n; i++)
        x[i] = ((words[i >> 6] >> (i & 63)) & 1) ? (sbn_real)-1 : (sbn_real)1;
}
#endif

#if SBN_NEED_UNPACK_MAP
/* +-1 reals in (C, H, W) order from a packed map (H, W, ceil(C/64)) */
static void sbn_unpack_map(const uint64_t *words, int c, int h, int w, sbn_real *x)
{
    int cw = (c + 63) / 64, ch, p;
    for (ch = 0; ch < c; ch++)
        for (p = 0; p < h * w; p++)
            x[(long)ch * h * w + p] = ((words[(long)p * cw + (ch >> 6)] >> (ch & 63)) & 1) ? (sbn_real)-1
                                                                                               : (sbn_real)1;
}
#endif

#if SBN_NEED_BITS_DENSE || SBN_NEED_REAL_CONV
/* +1 or -1 (a real) of element i of packed +-1 words */
static sbn_real sbn_sign_of_bit(const uint64_t *words, int i)
{
    return (sbn_real)(1 - 2 * (int)((words[i >> 6] >> (i & 63)) & 1));
}
#endif

#if SBN_NEED_REAL_DENSE
/* y_j = sum_i x_i w_ji, i ascending; w (n_out, n_in) reals. The product is its own statement so
 * that no compiler contracts it with the sum into a fused multiply-add. */
static void sbn_real_dense(const sbn_real *x, int n_in, const sbn_real *w, int n_out, sbn_real *y)
{
    int j, i;
    for (j = 0; j < n_out; j++) {
        const sbn_real *row = w + (long)j * n_in;
        sbn_real acc = 0;
        for (i = 0; i < n_in; i++) {
            sbn_real p = x[i] * row[i];
            acc += p;
        }
        y[j] = acc;
    }
}
#endif

#if SBN_NEED_BITS_DENSE
/* y_j = sum_i x_i w_ji with +-1 weights packed (n_out, ceil(n_in/64)); x_i * (+-1) is exact, and
 * the multiplication avoids an unpredictable branch per term. */
static void sbn_bits_dense(const sbn_real *x, int n_in, const uint64_t *w, int n_out, sbn_real *y)
{
    int n_words = (n_in + 63) / 64, j, i;
    for (j = 0; j < n_out; j++) {
        const uint64_t *row = w + (long)j * n_words;
        sbn_real acc = 0;
        for (i = 0; i < n_in; i++) {
            sbn_real p = x[i] * sbn_sign_of_bit(row, i);
            acc += p;
        }
        y[j] = acc;
    }
}
#endif

#if SBN_NEED_REAL_CONV
/* y (C_out, H_out, W_out) = conv(x, w) of a real map x (C_in, H, W), summed over (c_in, dy, dx) in
 * that order (taps in the zero padding add nothing). Weights either real w (C_out, C_in, kh, kw) or
 * packed +-1 bits (C_out, ceil(C_in kh kw / 64)) (then wr is NULL). */
static void sbn_real_conv(const sbn_real *x, const sbn_conv *g, const sbn_real *wr, const uint64_t *wb,
                          sbn_real *y)
{
    int taps = g->c_in * g->kernel_h * g->kernel_w, n_words = (taps + 63) / 64;
    int co, oy, ox, ci, dy, dx;
    for (co = 0; co < g->c_out; co++) {
        for (oy = 0; oy < g->out_height; oy++) {
            int dy0, dy1;
            sbn_tap_range(oy, g->stride_h, g->pad_h, g->kernel_h, g->height, &dy0, &dy1);
            for (ox = 0; ox < g->out_width; ox++) {
                int dx0, dx1;
                sbn_real acc = 0;
                sbn_tap_range(ox, g->stride_w, g->pad_w, g->kernel_w, g->width, &dx0, &dx1);
                for (ci = 0; ci < g->c_in; ci++) {
                    for (dy = dy0; dy < dy1; dy++) {
                        int iy = oy * g->stride_h - g->pad_h + dy;
                        for (dx = dx0; dx < dx1; dx++) {
                            int ix = ox * g->stride_w - g->pad_w + dx;
                            int tap = (ci * g->kernel_h + dy) * g->kernel_w + dx;
                            sbn_real v = x[((long)ci * g->height + iy) * g->width + ix];
                            sbn_real p = v * (wr ? wr[(long)co * taps + tap]
                                                 : sbn_sign_of_bit(wb + (long)co * n_words, tap));
                            acc += p;
                        }
                    }
                }
                y[((long)co * g->out_height + oy) * g->out_width + ox] = acc;
            }
        }
    }
}
#endif

#if SBN_NEED_REAL_THRESHOLD
/* Packed signs of y (c, positions) (the float layout) into (positions, ceil(c/64)) words; a dense
 * stage is one position. */
static void sbn_real_threshold(const sbn_real *y, int c, int positions, const sbn_real *t, const uint8_t *flip,
                               uint64_t *out)
{
    int cw = (c + 63) / 64, ch, p;
    sbn_clear(out, positions * cw);
    for (ch = 0; ch < c; ch++)
        for (p = 0; p < positions; p++)
            if (sbn_real_minus(y[(long)ch * positions + p], t[ch], flip[ch]))
                sbn_set_minus(out + (long)p * cw, ch);
}
#endif

/* index of the largest logit, the first one on ties (numpy.argmax) */
static int sbn_argmax(const sbn_real *logits, int n)
{
    int best = 0, i;
    for (i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}
/* ==== end of the runtime ========================================================================= */
