/* _stabilitylab_kernels: the optional compiled kernel of stabilitylab's bulk softmax_ce path.
 *
 * It does what the numpy code does for blocks of rows of float32 logits in bfloat16 or float32 (called from
 * stabilitylab/analysis/softmax_bulk.py, loaded by stabilitylab/numerics/kernel.py; softmax_bulk's docstring
 * states the operations):
 *   softmax_sums: per row, the logits stored in the format (xl), their max m and first argmax k, z = rnd(xl - m),
 *     ez = exp(z), ex = exp(xl), the pairwise trees S = T(ez), Sn = T(ex), S1 = T(ez with ez_k = 0), and ez_y,
 *     ex_y, z_y at the label y (softmax_bulk._sums);
 *   softmax_tail: the four methods' values from those (softmax_bulk._tail);
 *   ref_terms / ref_tree: the float64 reference's terms and sums around numpy's own exp
 *     (experiments/softmax_ce.fast_cross_entropy in float64);
 *   argmax_rows: each row's first maximum (the labels of a file without labels) and whether it is all finite;
 *   softmax_sums64 / softmax_tail64: the same sums and values in float64 (its section below: crmath's float64 exp,
 *     log and log1p, decided in stages);
 *   ref_expsum64: the sums of float64's bounded reference tier (experiments/softmax_ce.bounded_cross_entropy,
 *     numerics/expsum64.log1p_exp_sum's steps 1-4);
 *   exp32_many, log32_many, exp64_many, log64_many: the exps and logs alone, for the tests.
 * Every operation is the numpy path's on the same operands, rounded the same way, so the results are the same
 * bit for bit:
 *
 *   - float32 + - on float32 operands (x86-64 SSE arithmetic, no excess precision, no contraction: built
 *     with -ffp-contract=off, never -ffast-math);
 *   - rnd: bfloat16's round to nearest even on the float32 bits (formats.round_bfloat16), identity in float32;
 *   - exp in bfloat16: a table of crmath's own results at every 16-bit pattern (passed in, made by crmath);
 *   - exp in float32: exp32 below, a float64 evaluation whose correct rounding is decided from its bits as
 *     crmath._decided_by_bits decides it (with this evaluation's own error bound, EXP32_REL_ERROR); an
 *     undecided value is computed by the caller's crmath (the `fix` callable) and is very rare.
 *   - log and log1p in float32 (the tail): log32 / log1p32 below, decided the same way.
 *
 * A row is marked (flag) 1 when nothing the numpy path checks for an ordinary row failed here (stored
 * logits within range and not lost, every exp in (0, inf)); 0 when one of those checks failed (the row is
 * not ordinary: the caller sends it to the general engine, whatever the values here are); 2 when this kernel
 * left the row to the numpy path (an undecided exp beyond the budget of crmath calls).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>
#include <math.h>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#define KERNEL_API 12 /* numerics/kernel.py loads this module only when its API number matches */

static inline float f_of(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline uint32_t bits_of(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }
static inline double d_of(uint64_t b) { double d; memcpy(&d, &b, 8); return d; }
static inline uint64_t dbits_of(double d) { uint64_t b; memcpy(&b, &d, 8); return b; }

/* bfloat16 rounding of a float32 (formats.round_bfloat16): b + 0x7FFF + ((b >> 16) & 1), low half cleared;
 * a NaN unchanged. */
static inline float rnd_bf16(float y) {
    uint32_t b = bits_of(y);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return y;
    return f_of((b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u);
}

/* ------------------------------------------------------------------------------------------ exp32
 * e**z for float32 z, correctly rounded to float32 where decided.  w = 2**e * T[j] * p(r) in float64 with
 * k = rint(z * 64/ln2) = 64 e + j, r = (z - k c_hi) - k c_lo (c_hi + c_lo = ln2/64; k c_hi and the first
 * difference exact), p the degree-5 Taylor polynomial of e**r (|r| <= ln2/128 + tiny), T[j] = 2**(j/64)
 * correctly rounded (passed in: made with mpmath).  Relative error of w below 4 * 2**-53 (T 2**-53, the
 * polynomial's truncation 2**-54.6, its last addition 2**-53, the product 2**-53, the rest below 2**-59):
 * within EXP32_REL_ERROR = 2**-50.  Decision as crmath._decided_by_bits: with L the 29 dropped bits of w and
 * w's exponent E in [-126, 128), |L - 2**28| > ceil(2**-50 * 2**53) + 1 = 9 means no float32 rounding
 * boundary lies within the error of w, and the cast (float)w is the correctly rounded value.  (crmath also
 * leaves E = -126 and E = 127 aside; its proof holds there too: below 2**-126, a float32, the nearest midpoint
 * is 2**-150 below it, 2**28 ulps of w away; in the top binade the overflow threshold max + ulp/2 is the
 * midpoint above max, of the same dropped bits, and the cast rounds beyond it to inf.)  Subnormal results
 * (E < -126): decided where w 2**149 is farther than its error from the nearest half-integer (exp32_sub).  The
 * caller checks every float32 argument's result against crmath (tests/test_softmax_kernel.py, exhaustively in the
 * slow run).
 *
 * Written without branches or calls (k from the bits of x/c + 1.5 2**52, 2**e from k's bits) so that the
 * compiler vectorizes the block loops; the same IEEE operations in every lane, so the same values. */
static double EXP_T[64], EXP_INV, EXP_HI, EXP_LO;
static int exp_ready = 0;
#define EXP32_SLACK 9

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* out[i] = exp32(z[i]) and dec[i] = 1 where decided (0: undecided, a subnormal or huge result) */
INLINE double exp32_wide(float z) {
    const double shift = 6755399441055744.0; /* 1.5 * 2**52: adding and subtracting it rounds to an integer */
    const uint64_t shift_bits = 0x4338000000000000ull;
    double x = (double)z;
    double t = x * EXP_INV + shift;
    double kd = t - shift;
    uint64_t k = dbits_of(t) - shift_bits; /* k mod 2**64 */
    double r = (x - kd * EXP_HI) - kd * EXP_LO;
    double p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0)))));
    uint64_t j = k & 63;
    return EXP_T[j] * p * d_of(((k - j) << 46) + (1023ull << 52)); /* 2**e: (e + 1023) << 52 */
}

/* out[i] = exp32(z[i]) and dec[i] = 1 where decided by w's bits, results in [2**-126, 2**128) (0: undecided, and
 * every subnormal or huge result: exp32_sub decides most subnormal ones, out of the hot loop) */
static inline void exp32_block(const float *restrict z, float *restrict out, uint8_t *restrict dec,
                               Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        double w = exp32_wide(z[i]);
        uint64_t u = dbits_of(w);
        uint64_t E = (u >> 52) & 0x7FF; /* biased: 897 .. 1150 for [-126, 128) */
        uint64_t L = (u & ((1ull << 29) - 1)) - ((1ull << 28) - EXP32_SLACK); /* wraps below */
        out[i] = (float)w;
        dec[i] = (uint8_t)((E >= 1023 - 126) & (E < 1023 + 128) & (L > 2 * EXP32_SLACK) & (z[i] > -104.0f)
                           & (z[i] < 89.0f));
    }
}

/* subnormal results (w < 2**-126): u = w 2**149 in units of the spacing 2**-149, q = rint(u) (|u| < 2**23: the
 * shift rounds to an integer), decided (1, *out set) where the nearest rounding boundary q +- 1/2 is farther from
 * u than w's error, 2**-50 u (u - q is exact).  Only z in (-104, -87) (e**-87 is above 2**-126): for z >= 89
 * exp32_wide's 2**e wraps around and w may come out below 2**-126 (e**102114.375 as 1e-41: review9). */
static inline int exp32_sub(float z, float *out) {
    const double shift = 6755399441055744.0;
    double w = exp32_wide(z);
    double u = w * 0x1p149;
    double q = (u + shift) - shift;
    if (z > -104.0f && z < -87.0f && w < FLT_MIN && 0.5 - fabs(u - q) > u * 0x1p-50 + 1e-30) {
        *out = (float)w;
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ rows */
enum { BF16 = 0, F32 = 1 };
#define BF16_MAX 0x1.fep127f /* (2 - 2**-7) 2**127: bits 0x7F7F0000 */

typedef struct {
    int kind;
    const float *table; /* bfloat16: exp at each pattern */
    PyObject *fix;      /* float32: crmath's exp of one argument */
    Py_ssize_t budget;  /* calls of fix left in this call */
} Ctx;

static inline float rnd(int kind, float v) { return kind == BF16 ? rnd_bf16(v) : v; }

/* exp of one float32 value the block left undecided: 1 ok, 0 the row is left to numpy (flag 2), -1 error */
static int exp_fix(Ctx *c, float z, float *out) {
    if (z >= 89.0f) { *out = INFINITY; return 1; } /* e**89 > max + ulp/2: inf (the row is not ordinary) */
    if (z <= -104.0f) { *out = 0.0f; return 1; }   /* e**-104 < 2**-150: 0 (likewise) */
    if (!(z > -87.0f && z < 88.0f) || c->budget <= 0) return 0; /* subnormal / top-binade result: numpy */
    c->budget--;
    PyObject *got = PyObject_CallFunction(c->fix, "d", (double)z);
    if (got == NULL) return -1;
    double v = PyFloat_AsDouble(got);
    Py_DECREF(got);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    *out = (float)v; /* (a float32 value: exact) */
    return 1;
}

/* one level of the tree: d[i] = rnd(s[2i] + s[2i + 1]) for i < n / 2, and d[n / 2] = rnd(s[n - 1] + 0) where n
 * is odd (Arith.tree pads an odd level with +0; s is never written) */
static inline Py_ssize_t level(int kind, const float *restrict s, float *restrict d, Py_ssize_t n) {
    Py_ssize_t h = n >> 1;
    if (kind == BF16)
        for (Py_ssize_t i = 0; i < h; i++) d[i] = rnd_bf16(s[2 * i] + s[2 * i + 1]);
    else
        for (Py_ssize_t i = 0; i < h; i++) d[i] = s[2 * i] + s[2 * i + 1];
    if (n & 1) d[h++] = rnd(kind, s[n - 1] + 0.0f);
    return h;
}

/* the pairwise tree (Arith.tree) of e[0..n), its levels in b and t (room for n / 2 + 1 each), and the sum with
 * leaf k set to 0: at each level the sibling of k's node (the padding 0 where it is the odd level's last) */
static inline float tree(int kind, const float *e, float *b, float *t, Py_ssize_t n, Py_ssize_t k, float *dropped) {
    float v = 0.0f;
    const float *src = e;
    float *dst = t, *other = b;
    Py_ssize_t at = k;
    while (n > 1) {
        v = rnd(kind, v + ((at ^ 1) < n ? src[at ^ 1] : 0.0f));
        at >>= 1;
        n = level(kind, src, dst, n);
        src = dst;
        dst = other;
        other = (float *)src;
    }
    *dropped = v;
    return src[0];
}

/* The first index of the maximum of li[0..K), NaN taken as -inf (np.argmax(np.where(np.isnan(x), -inf, x)):
 * 0 where every value is NaN or -inf), and the maximum in *max (-inf there).  The maximum in 16 lanes (a > that
 * a NaN never passes), then the lanes; then the first index holding it, 16 values at a time (which of -0 / +0
 * a zero maximum is: any; the index is the first of them either way). */
static inline Py_ssize_t first_max(const float *restrict li, Py_ssize_t K, float *max) {
    float acc[16], m = -INFINITY;
    Py_ssize_t j = 0;
    if (K < 32) { /* short rows: one pass, without branches (a strict > keeps the first) */
        Py_ssize_t k = 0;
        for (; j < K; j++) {
            int up = li[j] > m;
            m = up ? li[j] : m;
            k = up ? j : k;
        }
        *max = m;
        return k;
    }
    for (int l = 0; l < 16; l++) acc[l] = -INFINITY;
    for (; j + 16 <= K; j += 16)
        for (int l = 0; l < 16; l++) acc[l] = li[j + l] > acc[l] ? li[j + l] : acc[l];
    for (int l = 0; l < 16; l++) m = acc[l] > m ? acc[l] : m;
    for (; j < K; j++) m = li[j] > m ? li[j] : m;
    *max = m;
    if (m == -INFINITY) return 0;
    j = 0;
    for (; j + 16 <= K; j += 16) {
        int any = 0;
        for (int l = 0; l < 16; l++) any |= li[j + l] == m;
        if (any) break;
    }
    while (!(li[j] == m)) j++;
    return j;
}

/* e = exp(a) on n values (B rows of K): the rows whose flag is 1 keep it where every exp of theirs is in
 * (0, inf), get 0 where one is not, 2 where one is left to numpy; -1 on a Python error */
static inline int exps(Ctx *c, const float *restrict a, float *restrict e, uint8_t *restrict dec, Py_ssize_t B,
                       Py_ssize_t K, uint8_t *restrict flag) {
    Py_ssize_t n = B * K;
    if (c->kind == BF16) {
        for (Py_ssize_t j = 0; j < n; j++) e[j] = c->table[bits_of(a[j]) >> 16];
    } else {
        exp32_block(a, e, dec, n);
        Py_ssize_t decided = 0;
        for (Py_ssize_t j = 0; j < n; j++) decided += dec[j];
        if (decided != n)
            for (Py_ssize_t j = 0; j < n; j++)
                if (!dec[j] && flag[j / K] == 1 && !exp32_sub(a[j], e + j)) {
                    int got = exp_fix(c, a[j], e + j);
                    if (got < 0) return -1;
                    if (got == 0) flag[j / K] = 2;
                }
    }
    for (Py_ssize_t i = 0; i < B; i++) {
        const float *ei = e + i * K;
        Py_ssize_t good = 0;
        for (Py_ssize_t j = 0; j < K; j++) good += (ei[j] > 0.0f) & (ei[j] < INFINITY);
        if (good != K && flag[i] == 1) flag[i] = 0;
    }
    return 0;
}

/* B rows of K logits x: the stored logits xl (bfloat16; in float32 the logits are stored as they are and xl
 * is x itself, not written), flag[i] (1, 0 or 2: see the header) and, where 1, the six sums
 * o[q * stride + i]; -1 on a Python error.  a and e hold B K values, b and t K / 2 + 1 */
CLONES static int rows_block(Ctx *c, const float *restrict x, float *xl, Py_ssize_t B, Py_ssize_t K,
                             const int64_t *restrict y, float *restrict a, float *restrict e, float *restrict b,
                             float *restrict t, uint8_t *restrict dec, float *restrict m, Py_ssize_t *restrict top,
                             uint8_t *restrict flag, float *restrict o, Py_ssize_t stride) {
    const int kind = c->kind;
    const float big = kind == BF16 ? BF16_MAX : FLT_MAX;
    const Py_ssize_t n = B * K;
    if (kind == BF16)
        for (Py_ssize_t j = 0; j < n; j++) xl[j] = rnd_bf16(x[j]);
    else
        xl = (float *)x; /* (read only below) */
    for (Py_ssize_t i = 0; i < B; i++) {
        const float *xi = x + i * K, *li = xl + i * K;
        Py_ssize_t whole = 0;
        for (Py_ssize_t j = 0; j < K; j++)
            whole += ((li[j] <= big) & (li[j] >= -big)) & ((li[j] != 0.0f) | (xi[j] == 0.0f));
        flag[i] = (uint8_t)(whole == K && y[i] >= 0 && y[i] < K);
        float *ai = a + i * K;
        if (!flag[i]) {
            memset(ai, 0, sizeof(float) * (size_t)K);
            continue;
        }
        top[i] = first_max(li, K, m + i); /* (every value finite here) */
        if (kind == BF16)
            for (Py_ssize_t j = 0; j < K; j++) ai[j] = rnd_bf16(li[j] - m[i]);
        else
            for (Py_ssize_t j = 0; j < K; j++) ai[j] = li[j] - m[i];
    }
    if (exps(c, a, e, dec, B, K, flag) < 0) return -1;
    for (Py_ssize_t i = 0; i < B; i++) {
        if (flag[i] != 1) continue;
        float S1, S = tree(kind, e + i * K, b, t, K, top[i], &S1);
        o[i] = S;
        o[stride + i] = S1;
        o[4 * stride + i] = e[i * K + y[i]];
        o[5 * stride + i] = a[i * K + y[i]];
    }
    if (exps(c, xl, e, dec, B, K, flag) < 0) return -1;
    for (Py_ssize_t i = 0; i < B; i++) {
        if (flag[i] != 1) continue;
        float unused;
        o[2 * stride + i] = tree(kind, e + i * K, b, t, K, 0, &unused);
        o[3 * stride + i] = e[i * K + y[i]];
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ short rows
 * Rows of at most SHORT_K logits, R = 256 rows at a time, worked on transposed: every step below is a loop over the
 * R rows of one column (contiguous, vectorized), as softmax_bulk._sums_short does in numpy, instead of a loop over
 * a row's few logits.  The same operations on the same operands as rows_block, so the same values. */
#define SHORT_K 16
#define SHORT_R 256

typedef struct {
    float xt[SHORT_K][SHORT_R], lt[SHORT_K][SHORT_R], zt[SHORT_K][SHORT_R], et[SHORT_K][SHORT_R];
    float lv[2][SHORT_K / 2 + 1][SHORT_R];
    float m[SHORT_R], v[SHORT_R];
    int32_t at[SHORT_R], ok[SHORT_R];
    uint8_t dec[SHORT_R];
} Tile;

/* et = exp(a) on the n rows of the tile; ok[r] kept where row r's exps are in (0, inf), 0 where not, 2 where left
 * to numpy; -1 on a Python error */
static inline int exps_tile(Ctx *c, Tile *T, float (*a)[SHORT_R], Py_ssize_t n, Py_ssize_t K) {
    for (Py_ssize_t j = 0; j < K; j++) {
        float *restrict e = T->et[j];
        const float *restrict aj = a[j];
        if (c->kind == BF16) {
            for (Py_ssize_t r = 0; r < n; r++) e[r] = c->table[bits_of(aj[r]) >> 16];
        } else {
            uint8_t *restrict dec = T->dec;
            exp32_block(aj, e, dec, n);
            Py_ssize_t decided = 0;
            for (Py_ssize_t r = 0; r < n; r++) decided += dec[r];
            if (decided != n)
                for (Py_ssize_t r = 0; r < n; r++) {
                    if (!dec[r] && T->ok[r] == 1 && !exp32_sub(aj[r], e + r)) {
                        int got = exp_fix(c, aj[r], e + r);
                        if (got < 0) return -1;
                        if (got == 0) T->ok[r] = 2;
                    }
                }
        }
        int32_t *restrict ok = T->ok;
        for (Py_ssize_t r = 0; r < n; r++) {
            int bad = !((e[r] > 0.0f) & (e[r] < INFINITY)) & (ok[r] == 1);
            ok[r] = bad ? 0 : ok[r];
        }
    }
    return 0;
}

/* the tree of the columns of T->et over the n rows (levels in T->lv), the sum in out[r]; with drop, the sum without
 * leaf T->at[r] in T->v[r] */
static inline void tree_tile(int kind, Tile *T, Py_ssize_t n, Py_ssize_t K, int drop, float *restrict out) {
    float(*src)[SHORT_R] = T->et;
    int which = 0;
    Py_ssize_t len = K;
    int32_t at[SHORT_R];
    if (drop)
        for (Py_ssize_t r = 0; r < n; r++) { T->v[r] = 0.0f; at[r] = T->at[r]; }
    while (len > 1) {
        float(*dst)[SHORT_R] = T->lv[which];
        if (drop) { /* each row's sibling of its leaf's node (0 past the level's end), chosen column by column on
                     * the bits (a read of src[at ^ 1][r], a different column per row, is not vectorized) */
            float sib[SHORT_R];
            for (Py_ssize_t r = 0; r < n; r++) sib[r] = 0.0f;
            for (Py_ssize_t c = 0; c < len; c++) {
                const float *restrict sc = src[c];
                for (Py_ssize_t r = 0; r < n; r++) {
                    const uint32_t hit = -(uint32_t)((at[r] ^ 1) == (int32_t)c), b = bits_of(sib[r]);
                    sib[r] = f_of(b ^ ((b ^ bits_of(sc[r])) & hit));
                }
            }
            for (Py_ssize_t r = 0; r < n; r++) {
                T->v[r] = rnd(kind, T->v[r] + sib[r]);
                at[r] >>= 1;
            }
        }
        Py_ssize_t h = len >> 1;
        for (Py_ssize_t i = 0; i < h; i++) {
            const float *restrict s0 = src[2 * i], *restrict s1 = src[2 * i + 1];
            float *restrict d = dst[i];
            if (kind == BF16)
                for (Py_ssize_t r = 0; r < n; r++) d[r] = rnd_bf16(s0[r] + s1[r]);
            else
                for (Py_ssize_t r = 0; r < n; r++) d[r] = s0[r] + s1[r];
        }
        if (len & 1) {
            const float *restrict s0 = src[len - 1];
            float *restrict d = dst[h];
            for (Py_ssize_t r = 0; r < n; r++) d[r] = rnd(kind, s0[r] + 0.0f);
            h++;
        }
        src = dst;
        which ^= 1;
        len = h;
    }
    for (Py_ssize_t r = 0; r < n; r++) out[r] = src[0][r];
}

/* n <= SHORT_R rows of K <= SHORT_K logits: as rows_block */
CLONES static int rows_short(Ctx *c, Tile *T, const float *restrict x, float *xl, Py_ssize_t n, Py_ssize_t K,
                             const int64_t *restrict y, uint8_t *restrict flag, float *restrict o, Py_ssize_t stride) {
    const int kind = c->kind;
    const float big = kind == BF16 ? BF16_MAX : FLT_MAX;
    for (Py_ssize_t r = 0; r < n; r++)
        for (Py_ssize_t j = 0; j < K; j++) T->xt[j][r] = x[r * K + j];
    for (Py_ssize_t j = 0; j < K; j++) {
        const float *restrict xj = T->xt[j];
        float *restrict lj = T->lt[j];
        if (kind == BF16)
            for (Py_ssize_t r = 0; r < n; r++) lj[r] = rnd_bf16(xj[r]);
        else
            for (Py_ssize_t r = 0; r < n; r++) lj[r] = xj[r];
    }
    if (kind == BF16) /* (row-major, from x: the same rounding) */
        for (Py_ssize_t i = 0; i < n * K; i++) xl[i] = rnd_bf16(x[i]);
    int32_t *restrict ok = T->ok;
    for (Py_ssize_t r = 0; r < n; r++) ok[r] = (y[r] >= 0) & (y[r] < K);
    for (Py_ssize_t j = 0; j < K; j++) {
        const float *restrict xj = T->xt[j], *restrict lj = T->lt[j];
        for (Py_ssize_t r = 0; r < n; r++)
            ok[r] &= ((lj[r] <= big) & (lj[r] >= -big)) & ((lj[r] != 0.0f) | (xj[r] == 0.0f));
    }
    float *restrict m = T->m;
    int32_t *restrict at = T->at;
    for (Py_ssize_t r = 0; r < n; r++) { m[r] = -INFINITY; at[r] = 0; }
    for (Py_ssize_t j = 0; j < K; j++) { /* a strict > keeps the first maximum */
        const float *restrict lj = T->lt[j];
        for (Py_ssize_t r = 0; r < n; r++) { /* (the choice made on the bits: gcc vectorizes this, not a ?:) */
            const uint32_t up = -(uint32_t)(lj[r] > m[r]), mb = bits_of(m[r]);
            m[r] = f_of(mb ^ ((mb ^ bits_of(lj[r])) & up));
            at[r] = (int32_t)((uint32_t)at[r] ^ (((uint32_t)at[r] ^ (uint32_t)j) & up));
        }
    }
    for (Py_ssize_t j = 0; j < K; j++) {
        const float *restrict lj = T->lt[j];
        float *restrict zj = T->zt[j];
        if (kind == BF16)
            for (Py_ssize_t r = 0; r < n; r++) zj[r] = rnd_bf16(lj[r] - m[r]);
        else
            for (Py_ssize_t r = 0; r < n; r++) zj[r] = lj[r] - m[r];
    }
    for (Py_ssize_t r = 0; r < n; r++) /* (rows not whole: any finite stand-in, their values are not read) */
        if (!ok[r]) {
            at[r] = 0;
            for (Py_ssize_t j = 0; j < K; j++) T->zt[j][r] = 0.0f;
        }
    if (exps_tile(c, T, T->zt, n, K) < 0) return -1;
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t yr = ok[r] ? (Py_ssize_t)y[r] : 0;
        o[4 * stride + r] = T->et[yr][r];
        o[5 * stride + r] = T->zt[yr][r];
    }
    tree_tile(kind, T, n, K, 1, o);
    for (Py_ssize_t r = 0; r < n; r++) o[stride + r] = T->v[r];
    if (exps_tile(c, T, T->lt, n, K) < 0) return -1;
    for (Py_ssize_t r = 0; r < n; r++) o[3 * stride + r] = T->et[ok[r] ? (Py_ssize_t)y[r] : 0][r];
    tree_tile(kind, T, n, K, 0, o + 2 * stride);
    for (Py_ssize_t r = 0; r < n; r++) flag[r] = (uint8_t)ok[r];
    return 0;
}

#define BLOCK_VALUES 4096 /* values per block of rows (a row at least) */

static PyObject *softmax_sums(PyObject *self, PyObject *args) {
    int kind;
    Py_ssize_t rows, K, budget;
    Py_buffer xb, yb, tb, xlb, ob, fb;
    PyObject *fix;
    if (!PyArg_ParseTuple(args, "inny*y*y*w*w*w*On", &kind, &rows, &K, &xb, &yb, &tb, &xlb, &ob, &fb, &fix,
                          &budget))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t B = K >= BLOCK_VALUES ? 1 : BLOCK_VALUES / (K > 0 ? K : 1);
    float *a = NULL, *e = NULL, *b = NULL, *t = NULL, *m = NULL;
    Py_ssize_t *top = NULL;
    uint8_t *dec = NULL;
    if ((kind != BF16 && kind != F32) || rows < 0 || K < 1 || xb.len != rows * K * 4 || yb.len != rows * 8
        || xlb.len != (kind == BF16 ? rows * K * 4 : 0) || ob.len != 6 * rows * 4 || fb.len != rows
        || (kind == BF16 && tb.len != 65536 * 4) || (kind == F32 && !exp_ready)) {
        PyErr_SetString(PyExc_ValueError, "softmax_sums: buffers of the wrong size, or no exp constants");
        goto done;
    }
    a = (float *)malloc(sizeof(float) * (size_t)(B * K));
    e = (float *)malloc(sizeof(float) * (size_t)(B * K));
    b = (float *)malloc(sizeof(float) * (size_t)(K / 2 + 1));
    t = (float *)malloc(sizeof(float) * (size_t)(K / 2 + 1));
    m = (float *)malloc(sizeof(float) * (size_t)B);
    top = (Py_ssize_t *)malloc(sizeof(Py_ssize_t) * (size_t)B);
    dec = (uint8_t *)malloc((size_t)(B * K));
    if (!a || !e || !b || !t || !m || !top || !dec) { PyErr_NoMemory(); goto done; }
    Ctx c = {kind, (const float *)tb.buf, fix, budget};
    const float *x = (const float *)xb.buf;
    const int64_t *y = (const int64_t *)yb.buf;
    float *xl = kind == BF16 ? (float *)xlb.buf : NULL, *o = (float *)ob.buf;
    uint8_t *flag = (uint8_t *)fb.buf;
    if (K <= SHORT_K) {
        Tile *T = (Tile *)malloc(sizeof(Tile));
        if (T == NULL) { PyErr_NoMemory(); goto done; }
        int failed = 0;
        for (Py_ssize_t i = 0; i < rows && !failed; i += SHORT_R) {
            Py_ssize_t here = rows - i < SHORT_R ? rows - i : SHORT_R;
            failed = rows_short(&c, T, x + i * K, xl ? xl + i * K : NULL, here, K, y + i, flag + i, o + i, rows) < 0;
        }
        free(T);
        if (failed) goto done;
    } else
    for (Py_ssize_t i = 0; i < rows; i += B) {
        Py_ssize_t here = rows - i < B ? rows - i : B;
        if (rows_block(&c, x + i * K, xl ? xl + i * K : NULL, here, K, y + i, a, e, b, t, dec, m, top, flag + i,
                       o + i, rows) < 0)
            goto done;
    }
    result = PyLong_FromSsize_t(budget - c.budget);
done:
    free(a); free(e); free(b); free(t); free(m); free(top); free(dec);
    PyBuffer_Release(&xb); PyBuffer_Release(&yb); PyBuffer_Release(&tb);
    PyBuffer_Release(&xlb); PyBuffer_Release(&ob); PyBuffer_Release(&fb);
    return result;
}

/* argmax_rows: each row's first maximum (first_max) and whether every value of the row is finite (1) or not (0);
 * the row is read again by the count of finite values while it is still in cache. */
CLONES static void argmax_block(const float *x, Py_ssize_t rows, Py_ssize_t K, int64_t *out, uint8_t *fin) {
    float unused;
    for (Py_ssize_t i = 0; i < rows; i++) {
        const float *li = x + i * K;
        out[i] = (int64_t)first_max(li, K, &unused);
        Py_ssize_t finite = 0;
        for (Py_ssize_t j = 0; j < K; j++) finite += fabsf(li[j]) < INFINITY;
        fin[i] = finite == K;
    }
}

static PyObject *argmax_rows(PyObject *self, PyObject *args) {
    Py_ssize_t rows, K;
    Py_buffer xb, ob, fb;
    if (!PyArg_ParseTuple(args, "nny*w*w*", &rows, &K, &xb, &ob, &fb)) return NULL;
    PyObject *result = NULL;
    if (rows < 0 || K < 1 || xb.len != rows * K * 4 || ob.len != rows * 8 || fb.len != rows) {
        PyErr_SetString(PyExc_ValueError, "argmax_rows: buffers of the wrong size");
    } else {
        argmax_block((const float *)xb.buf, rows, K, (int64_t *)ob.buf, (uint8_t *)fb.buf);
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&xb); PyBuffer_Release(&ob); PyBuffer_Release(&fb);
    return result;
}

/* ------------------------------------------------------------------------------------------ tail
 * The four methods' per-row tails (softmax_bulk._tail) from the sums: rn = rnd(ex_y / Sn), rs = rnd(ez_y / S),
 * naive -log(rn), shifted -log(rs), log_softmax rnd(log(S) - z_y), log_softmax_log1p rnd(log1p(S1) - z_y), and
 * the ordinary-row checks there.  log and log1p: bfloat16 from tables of crmath's results at every pattern (as
 * softmax_bulk._cr), float32 by log32 below, decided from its bits as exp32 (a row with an undecided one is left
 * to numpy, flag 2).
 *
 * log32: log a for a positive finite float64 a (a float32, or 1 + S1).  a = 2**e m with m in [0.703125,
 * 1.40625) (m >= 1.40625 halved), c = i / 128 with i = rint(128 m) (so c is exact and m - c too: |m - c| <=
 * 2**-8, both multiples of 2**-53), r = (m - c) (1 / c) rounded twice (within 2**-52 |r|; |r| < 0.0056),
 * log a = e ln2 + log c + log1p(r)
 * with log1p(r) by its Taylor series to r**7 (truncation below 2**-63 |r|... |r|**8 / 8 < 2**-62), ln2 = L_HI + L_LO
 * (L_HI of 40 bits: e L_HI exact) and log c from a table made with mpmath (correctly rounded).  Where e != 0,
 * |log a| >= 0.33 and |e ln2| + |log c| <= 3.1 |log a|; where e = 0 and c != 1, |log a| >= |log c| / 2; c = 1
 * leaves log1p(r) alone: the roundings (table 2**-53 |log c|, two additions, the polynomial's last steps and r's
 * 2**-53 |r|) stay below 8 * 2**-53 |log a| = 2**-50 |log a|; the bound used is LOG32_REL_ERROR = 2**-49
 * (slack ceil(2**-49 2**53) + 1 = 17 float64 ulps).  log1p(s) for s < 2**-7 by its Taylor series to s**8 (exact
 * s, truncation below 2**-63 s); above, log32(1 + s) (1 + s exact below 2**29; beyond, its rounding moves log by
 * below 2**-53 / 20 relative).  tests/test_softmax_kernel.py checks every float32 argument against crmath (slow
 * run). */
static double LOG_C[256], LOG_HI, LOG_LO;
static int log_ready = 0;
#define LOG32_SLACK 17

INLINE double log_poly(double r) { /* log1p(r) = r - r^2/2 + ... + r^7/7 */
    double q = r * (1.0 / 7.0);
    q = r * (-1.0 / 6.0 + q);
    q = r * (1.0 / 5.0 + q);
    q = r * (-1.0 / 4.0 + q);
    q = r * (1.0 / 3.0 + q);
    q = r * (-0.5 + q);
    return r + r * q;
}

/* log a (a > 0 finite, normal; any other a gives some finite value, not read), without branches */
static double LOG_INV_C[256];

INLINE double log_wide(double a) {
    uint64_t u = dbits_of(a);
    double m = d_of((u & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull); /* [1, 2) */
    /* m >= 1.40625: m halved, e + 1 (by arithmetic on a scale of 1 or 1/2, not a branch: the compiler would split
     * the rest of the function on it and no longer vectorize the loops) */
    double half = d_of(0x3FF0000000000000ull - ((uint64_t)(m >= 1.40625) << 52)); /* 1 or 1/2 */
    m = m * half;
    double ci = (m * 128.0 + 6755399441055744.0) - 6755399441055744.0; /* rint(128 m): 90 .. 180 */
    uint64_t i = dbits_of(m * 128.0 + 6755399441055744.0) & 255;
    double r = (m - ci * (1.0 / 128.0)) * LOG_INV_C[i]; /* ((m - c) exact) / c, rounded twice: |error| < 2**-52 |r| */
    /* e = the exponent (+ 1 where m was halved), as a float64 from the exponent field's bits (2**52 + field, exact;
     * no integer-to-float conversion, which keeps the loops vectorized): integers, every step exact */
    double ed = ((d_of(0x4330000000000000ull | ((u >> 52) & 0x7FF)) - 0x1p52) - 1023.0) + (2.0 - 2.0 * half);
    return (ed * LOG_HI + LOG_C[i]) + (log_poly(r) + ed * LOG_LO);
}

/* log1p s (s >= 0 finite), without branches */
INLINE double log1p_wide(double s) {
    double q = s * (-1.0 / 8.0);
    q = s * (1.0 / 7.0 + q);
    q = s * (-1.0 / 6.0 + q);
    q = s * (1.0 / 5.0 + q);
    q = s * (-1.0 / 4.0 + q);
    q = s * (1.0 / 3.0 + q);
    q = s * (-0.5 + q);
    double small = s + s * q, big = log_wide(1.0 + s);
    return s < 0.0078125 ? small : big;
}

/* the float32 rounding of w, and whether it is decided as exp32's */
INLINE float decided32(double w, int *dec) {
    uint64_t u = dbits_of(w);
    uint64_t E = (u >> 52) & 0x7FF;
    uint64_t L = (u & ((1ull << 29) - 1)) - ((1ull << 28) - LOG32_SLACK);
    *dec = (E >= 1023 - 126) & (E < 1023 + 127) & (L > 2 * LOG32_SLACK);
    return (float)w;
}

/* float32 log v (v > 0 normal and finite: ordinary rows' arguments; log 1 = +0) and log1p v (v = 0 or normal and
 * finite; log1p 0 = 0), and whether decided (subnormal, 0 (log), NaN, inf: not) */
INLINE float log32(float v, int *dec) {
    int d;
    float out = decided32(log_wide((double)v), &d);
    int one = v == 1.0f;
    *dec = one | (d & (v >= FLT_MIN) & (v < INFINITY));
    return one ? 0.0f : out;
}
INLINE float log1p32(float v, int *dec) {
    int d;
    float out = decided32(log1p_wide((double)v), &d);
    int zero = v == 0.0f;
    *dec = zero | (d & (v >= FLT_MIN) & (v < INFINITY));
    return zero ? v : out;
}

CLONES static void log32_many_block(const float *restrict x, float *restrict o, uint8_t *restrict d, Py_ssize_t n,
                                    int one) {
    if (one)
        for (Py_ssize_t i = 0; i < n; i++) {
            int dec;
            o[i] = log1p32(x[i], &dec);
            d[i] = (uint8_t)dec;
        }
    else
        for (Py_ssize_t i = 0; i < n; i++) {
            int dec;
            o[i] = log32(x[i], &dec);
            d[i] = (uint8_t)dec;
        }
}

/* log32_many(x, out, decided, log1p): the kernel's float32 log (log1p) of each value, for the tests */
static PyObject *log32_many(PyObject *self, PyObject *args) {
    Py_buffer xb, ob, db;
    int one;
    if (!PyArg_ParseTuple(args, "y*w*w*p", &xb, &ob, &db, &one)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = xb.len / 4;
    if (!log_ready || ob.len != xb.len || db.len != n) {
        PyErr_SetString(PyExc_ValueError, "log32_many: buffers of the wrong size, or no log constants");
    } else {
        log32_many_block((const float *)xb.buf, (float *)ob.buf, (uint8_t *)db.buf, n, one);
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&xb); PyBuffer_Release(&ob); PyBuffer_Release(&db);
    return result;
}

/* rows [i0, i0 + nb) of tail_block, nb <= TAIL_R, in three loops without branches (kind a constant where it is
 * inlined): the ratios, the logs (bfloat16: table reads; float32: log32 / log1p32, a loop each, as in log32_many), then
 * the values and flags.  (One loop of it all, with a test of kind inside, kept gcc from vectorizing float32's logs:
 * ~39 ns a row.) */
#define TAIL_R 256
INLINE void tail_rows(const int kind, Py_ssize_t i0, Py_ssize_t nb, Py_ssize_t n, const float *restrict sums,
                      const float *restrict tl, const float *restrict tl1, float *restrict o, uint8_t *restrict flag) {
    const float *S = sums + i0, *S1 = sums + n + i0, *Sn = sums + 2 * n + i0, *exy = sums + 3 * n + i0,
                *ezy = sums + 4 * n + i0, *zy = sums + 5 * n + i0;
    float rn[TAIL_R], rs[TAIL_R], ln[TAIL_R], ls[TAIL_R], lS[TAIL_R], l1[TAIL_R];
    int32_t dec[TAIL_R];
    for (Py_ssize_t r = 0; r < nb; r++) {
        rn[r] = rnd(kind, exy[r] / Sn[r]);
        rs[r] = rnd(kind, ezy[r] / S[r]);
    }
    if (kind == BF16) {
        for (Py_ssize_t r = 0; r < nb; r++) {
            ln[r] = tl[bits_of(rn[r]) >> 16];
            ls[r] = tl[bits_of(rs[r]) >> 16];
            lS[r] = tl[bits_of(S[r]) >> 16];
            l1[r] = tl1[bits_of(S1[r]) >> 16];
            dec[r] = 1;
        }
    } else {
        int d;
        for (Py_ssize_t r = 0; r < nb; r++) ln[r] = log32(rn[r], &d), dec[r] = d;
        for (Py_ssize_t r = 0; r < nb; r++) ls[r] = log32(rs[r], &d), dec[r] &= d;
        for (Py_ssize_t r = 0; r < nb; r++) lS[r] = log32(S[r], &d), dec[r] &= d;
        for (Py_ssize_t r = 0; r < nb; r++) l1[r] = log1p32(S1[r], &d), dec[r] &= d;
    }
    for (Py_ssize_t r = 0; r < nb; r++) { /* (rows not ordinary compute anything, flagged 0) */
        int ok = (S[r] < INFINITY) & (Sn[r] < INFINITY) & (rn[r] > 0.0f) & (rn[r] < INFINITY) & (rs[r] > 0.0f)
                 & (rs[r] < INFINITY);
        float v0 = -ln[r], v1 = -ls[r], v2 = rnd(kind, lS[r] - zy[r]), v3 = rnd(kind, l1[r] - zy[r]);
        ok &= ((l1[r] != 0.0f) | (S1[r] == 0.0f)) & (fabsf(v0) < INFINITY) & (fabsf(v1) < INFINITY)
              & (fabsf(v2) < INFINITY) & (fabsf(v3) < INFINITY);
        int f = flag[i0 + r];
        flag[i0 + r] = (uint8_t)(f != 1 ? f : !ok ? 0 : dec[r] ? 1 : 2);
        o[i0 + r] = v0; o[n + i0 + r] = v1; o[2 * n + i0 + r] = v2; o[3 * n + i0 + r] = v3;
    }
}

CLONES static void tail_block(int kind, Py_ssize_t n, const float *restrict sums, const float *restrict tl,
                              const float *restrict tl1, float *restrict o, uint8_t *restrict flag) {
    for (Py_ssize_t i0 = 0; i0 < n; i0 += TAIL_R) {
        Py_ssize_t nb = n - i0 < TAIL_R ? n - i0 : TAIL_R;
        if (kind == BF16)
            tail_rows(BF16, i0, nb, n, sums, tl, tl1, o, flag);
        else
            tail_rows(F32, i0, nb, n, sums, tl, tl1, o, flag);
    }
}

/* softmax_tail(kind, n, sums (6, n) float32, log table, log1p table, out (4, n) float32, flag uint8 in/out) */
static PyObject *softmax_tail(PyObject *self, PyObject *args) {
    int kind;
    Py_ssize_t n;
    Py_buffer sb, tb, t1b, ob, fb;
    if (!PyArg_ParseTuple(args, "iny*y*y*w*w*", &kind, &n, &sb, &tb, &t1b, &ob, &fb)) return NULL;
    PyObject *result = NULL;
    if ((kind != BF16 && kind != F32) || n < 0 || sb.len != 6 * n * 4 || ob.len != 4 * n * 4 || fb.len != n
        || (kind == BF16 && (tb.len != 65536 * 4 || t1b.len != 65536 * 4)) || (kind == F32 && !log_ready)) {
        PyErr_SetString(PyExc_ValueError, "softmax_tail: buffers of the wrong size, or no log constants");
    } else {
        tail_block(kind, n, (const float *)sb.buf, (const float *)tb.buf, (const float *)t1b.buf, (float *)ob.buf,
                   (uint8_t *)fb.buf);
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&sb); PyBuffer_Release(&tb); PyBuffer_Release(&t1b);
    PyBuffer_Release(&ob); PyBuffer_Release(&fb);
    return result;
}

static PyObject *set_log_constants(PyObject *self, PyObject *args) {
    Py_buffer tb;
    double hi, lo;
    if (!PyArg_ParseTuple(args, "y*dd", &tb, &hi, &lo)) return NULL;
    if (tb.len != 256 * 8) {
        PyBuffer_Release(&tb);
        PyErr_SetString(PyExc_ValueError, "set_log_constants: 256 float64 values");
        return NULL;
    }
    memcpy(LOG_C, tb.buf, 256 * 8);
    for (int i = 0; i < 256; i++) LOG_INV_C[i] = i ? 128.0 / (double)i : 0.0; /* (IEEE: 1 / c correctly rounded) */
    LOG_HI = hi; LOG_LO = lo;
    log_ready = 1;
    PyBuffer_Release(&tb);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ reference
 * The float64 reference of bfloat16 / float16 / float32 (experiments/softmax_ce.fast_cross_entropy in float64)
 * but its exps, which stay numpy's (np.exp, whose values the general engine's reference uses too): ref_terms
 * writes, per row of float32 logits, t_i = x_i - m in float64 (m = x_top, top the first maximum: np.argmax's)
 * with t_top = 0, gap = -(x_y - m), m and top; the caller takes np.exp(t) in place; ref_tree then sets each
 * row's t_top to the +0 the numpy path puts there and sums the row's terms pairwise, level by level, an odd
 * level's last term added to +0 (softmax_ce._tree_sum's tree).  (t_top = -inf would give that +0 from np.exp
 * itself, but one -inf in a few lanes sends numpy's SIMD exp to its slow path: 5x slower on rows of 10.)  The same
 * float64 operations on the same operands as the numpy path, so the same values.  ref_terms returns 0 (nothing usable) if a logit is not finite: the numpy path
 * then takes the chunk as a whole, as it does itself. */
CLONES static int ref_terms_block(Py_ssize_t rows, Py_ssize_t K, const float *restrict L,
                                  const int64_t *restrict y, double *restrict t, double *restrict gap,
                                  double *restrict mo, int64_t *restrict top) {
    for (Py_ssize_t i = 0; i < rows; i++) {
        const float *li = L + i * K;
        double *ti = t + i * K;
        Py_ssize_t finite = 0;
        for (Py_ssize_t j = 0; j < K; j++) finite += fabsf(li[j]) < INFINITY;
        if (finite != K || y[i] < 0 || y[i] >= K) return 0;
        float mf;
        Py_ssize_t k = first_max(li, K, &mf);
        double m = (double)mf;
        for (Py_ssize_t j = 0; j < K; j++) ti[j] = (double)li[j] - m;
        gap[i] = -ti[y[i]];
        ti[k] = 0.0;
        mo[i] = m;
        top[i] = (int64_t)k;
    }
    return 1;
}

CLONES static void ref_tree_block(Py_ssize_t rows, Py_ssize_t K, double *restrict t, const int64_t *restrict top,
                                  double *restrict b, double *restrict c, double *restrict total) {
    /* the max's own term: +0 (np.exp left its e^0 = 1), in a pass of its own (measured faster than storing it
     * just before each row's loads) */
    for (Py_ssize_t i = 0; i < rows; i++) t[i * K + top[i]] = 0.0;
    for (Py_ssize_t i = 0; i < rows; i++) {
        const double *src = t + i * K;
        double *dst = b, *other = c;
        Py_ssize_t n = K;
        while (n > 1) {
            Py_ssize_t h = n >> 1;
            for (Py_ssize_t q = 0; q < h; q++) dst[q] = src[2 * q] + src[2 * q + 1];
            if (n & 1) dst[h++] = src[n - 1] + 0.0;
            src = dst;
            dst = other;
            other = (double *)src;
            n = h;
        }
        total[i] = src[0];
    }
}

/* ref_terms(rows, K, L float32, y int64, t float64 (rows K), gap, m float64, top int64) -> bool */
static PyObject *ref_terms(PyObject *self, PyObject *args) {
    Py_ssize_t rows, K;
    Py_buffer lb, yb, tb, gb, mb, kb;
    if (!PyArg_ParseTuple(args, "nny*y*w*w*w*w*", &rows, &K, &lb, &yb, &tb, &gb, &mb, &kb)) return NULL;
    PyObject *result = NULL;
    if (rows < 0 || K < 1 || lb.len != rows * K * 4 || yb.len != rows * 8 || tb.len != rows * K * 8
        || gb.len != rows * 8 || mb.len != rows * 8 || kb.len != rows * 8) {
        PyErr_SetString(PyExc_ValueError, "ref_terms: buffers of the wrong size");
    } else {
        result = PyBool_FromLong(ref_terms_block(rows, K, (const float *)lb.buf, (const int64_t *)yb.buf,
                                                 (double *)tb.buf, (double *)gb.buf, (double *)mb.buf,
                                                 (int64_t *)kb.buf));
    }
    PyBuffer_Release(&lb); PyBuffer_Release(&yb); PyBuffer_Release(&tb);
    PyBuffer_Release(&gb); PyBuffer_Release(&mb); PyBuffer_Release(&kb);
    return result;
}

/* ref_tree(rows, K, t float64 (rows K), top int64 (rows, each in [0, K)), total float64 (rows)) */
static PyObject *ref_tree(PyObject *self, PyObject *args) {
    Py_ssize_t rows, K;
    Py_buffer tb, kb, ob;
    if (!PyArg_ParseTuple(args, "nnw*y*w*", &rows, &K, &tb, &kb, &ob)) return NULL;
    PyObject *result = NULL;
    double *b = NULL, *c = NULL;
    const int64_t *top = (const int64_t *)kb.buf;
    int tops_in_range = kb.len == rows * 8;
    for (Py_ssize_t i = 0; tops_in_range && i < rows; i++) tops_in_range = top[i] >= 0 && top[i] < K;
    if (rows < 0 || K < 1 || tb.len != rows * K * 8 || ob.len != rows * 8 || !tops_in_range) {
        PyErr_SetString(PyExc_ValueError, "ref_tree: buffers of the wrong size");
    } else if (!(b = (double *)malloc(sizeof(double) * (size_t)(K / 2 + 1)))
               || !(c = (double *)malloc(sizeof(double) * (size_t)(K / 2 + 1)))) {
        PyErr_NoMemory();
    } else {
        ref_tree_block(rows, K, (double *)tb.buf, top, b, c, (double *)ob.buf);
        result = Py_None;
        Py_INCREF(result);
    }
    free(b); free(c);
    PyBuffer_Release(&tb); PyBuffer_Release(&kb); PyBuffer_Release(&ob);
    return result;
}

static PyObject *set_exp_constants(PyObject *self, PyObject *args) {
    Py_buffer tb;
    double inv, hi, lo;
    if (!PyArg_ParseTuple(args, "y*ddd", &tb, &inv, &hi, &lo)) return NULL;
    if (tb.len != 64 * 8) {
        PyBuffer_Release(&tb);
        PyErr_SetString(PyExc_ValueError, "set_exp_constants: 64 float64 values");
        return NULL;
    }
    memcpy(EXP_T, tb.buf, 64 * 8);
    EXP_INV = inv; EXP_HI = hi; EXP_LO = lo;
    exp_ready = 1;
    PyBuffer_Release(&tb);
    Py_RETURN_NONE;
}

CLONES static void exp32_many_block(const float *x, float *o, uint8_t *d, Py_ssize_t n) {
    exp32_block(x, o, d, n);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!d[i]) d[i] = (uint8_t)exp32_sub(x[i], o + i);
}

/* exp32 on every float32 of a buffer: out (float32) and decided (uint8), for the tests */
static PyObject *exp32_many(PyObject *self, PyObject *args) {
    Py_buffer xb, ob, db;
    if (!PyArg_ParseTuple(args, "y*w*w*", &xb, &ob, &db)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = xb.len / 4;
    if (!exp_ready || ob.len != xb.len || db.len != n) {
        PyErr_SetString(PyExc_ValueError, "exp32_many: buffers of the wrong size, or no exp constants");
    } else {
        const float *x = (const float *)xb.buf;
        float *o = (float *)ob.buf;
        uint8_t *d = (uint8_t *)db.buf;
        exp32_many_block(x, o, d, n);
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&xb); PyBuffer_Release(&ob); PyBuffer_Release(&db);
    return result;
}

/* ------------------------------------------------------------------------------------------ float64
 * softmax_sums64: softmax_bulk._sums in float64 (held dtype float64, rnd the identity: IEEE + on float64) for
 * float32 logits, whose float64 values are exact (xl = x; a float32 is finite or not, never lost in float64).
 * exp is crmath's float64 exp, correctly rounded, decided in three stages as crmath decides it:
 *
 *   1. exp64_pair: numerics/exp64._block, the same float64 operations in the same order (so its proven bound,
 *      REL_ERROR = 2**-62, holds), e**x = (s + err) 2**e (1 + d) for x in [-707, 709]; decided where
 *      |err| < fl(h - fl(s E (1 + 2**-40))) with h = 2**-53 for s > 1, 2**-54 for s <= 1 (crmath._exp_float64's
 *      test and proof): the result is 2**e s.  About 0.3% of the arguments are left to
 *   2. exp64_dd: numerics/doubledouble.exp (_exp_parts, _scaled), the same double-double operations (REL_ERROR
 *      2**-90, domain [-670, 709]); decided where h + (l - E|h|) and h + (l + E|h|) round alike (crmath.
 *      _double_double's test).  What is left (about 2**-36 of those), and arguments outside the domains with a
 *      subnormal or near-overflow result, go to
 *   3. the caller's crmath (the `fix` callable), within a budget; beyond it the row is left to numpy (flag 2).
 * Arguments >= 710 give inf and <= -746 give 0 (e**710 > max, e**-746 < 2**-1075): the row is not ordinary.
 * The constants are numerics/exp64's and numerics/doubledouble's own (set_exp64_constants), made with mpmath.
 */
static double X64_HI[2048], X64_LO[2048], X64_INV, X64_C1, X64_C2, DD_L[3], DD_C[12][2], X64_LOG_ERROR;
static int exp64_ready = 0;
#define X64_SHIFT 6755399441055744.0 /* 1.5 * 2**52 */
#define X64_SHIFT_BITS 0x4338000000000000ll

/* exp64._block for one x in [-707, 709]: (s, err, e) */
INLINE double exp64_pair(double x, double *err, int64_t *e) {
    double k = x * X64_INV;
    k += X64_SHIFT;
    int64_t bits = (int64_t)dbits_of(k);
    int64_t j = bits & 2047;
    *e = (bits >> 11) - (X64_SHIFT_BITS >> 11);
    k -= X64_SHIFT;
    double r = k * X64_C1;
    r = x - r;
    double q = k * X64_C2;
    r = r - q;
    q = r * (1.0 / 120.0);
    q += 1.0 / 24.0;
    q *= r;
    q += 1.0 / 6.0;
    q *= r;
    q += 0.5;
    q *= r;
    q *= r;
    q += r;
    double th = X64_HI[j], tl = X64_LO[j];
    q = th * q;
    q += tl;
    double s = th + q;
    *err = (th - s) + q;
    return s;
}

/* stage 1 on n arguments: out[i] = 2**e s and dec[i] = 1 where decided (0 elsewhere, and outside [-707, 709]) */
INLINE void exp64_block(const double *restrict x, double *restrict out, uint8_t *restrict dec, Py_ssize_t n) {
    const double margin = -0x1p-62 * (1.0 + 0x1p-40); /* -REL_ERROR (1 + 2**-40), exact */
    for (Py_ssize_t i = 0; i < n; i++) {
        double xi = x[i];
        int in = (xi >= -707.0) & (xi <= 709.0);
        double a = in ? xi : 0.0, err;
        int64_t e;
        double s = exp64_pair(a, &err, &e);
        double t = s * margin + 0x1p-54;
        t = s > 1.0 ? t + 0x1p-54 : t;
        out[i] = s * d_of((uint64_t)(e + 1023) << 52);
        dec[i] = (uint8_t)(in & (fabs(err) < t));
    }
}

/* double-double arithmetic (doubledouble.py: two_sum, fast_two_sum, Veltkamp's split, Dekker's product) */
INLINE void dd_two_sum(double a, double b, double *s, double *e) {
    *s = a + b;
    double bb = *s - a;
    *e = (a - (*s - bb)) + (b - bb);
}
INLINE void dd_fast_two_sum(double a, double b, double *s, double *e) {
    *s = a + b;
    *e = b - (*s - a);
}
INLINE void dd_split(double a, double *hi, double *lo) {
    double c = 134217729.0 * a;
    *hi = c - (c - a);
    *lo = a - *hi;
}
INLINE void dd_two_prod(double a, double b, double *p, double *e) {
    double ah, al, bh, bl;
    *p = a * b;
    dd_split(a, &ah, &al);
    dd_split(b, &bh, &bl);
    *e = ((ah * bh - *p) + ah * bl + al * bh) + al * bl;
}
INLINE void dd_mul(double ah, double al, double bh, double bl, double *h, double *l) {
    double p, e;
    dd_two_prod(ah, bh, &p, &e);
    e = e + (ah * bl + al * bh);
    dd_fast_two_sum(p, e, h, l);
}
INLINE void dd_add(double ah, double al, double bh, double bl, double *h, double *l) {
    double s, e, t, f;
    dd_two_sum(ah, bh, &s, &e);
    dd_two_sum(al, bl, &t, &f);
    e = e + t;
    dd_fast_two_sum(s, e, &s, &e);
    e = e + f;
    dd_fast_two_sum(s, e, h, l);
}

/* stage 2: doubledouble.exp(x) for x in [-670, 709] and crmath._double_double's decision; 1 and *out where
 * decided */
/* doubledouble._exp_parts: x = k ln2 + r, q = e**r - 1 as the double-double (qh, ql) */
static void dd_exp_parts(double x, double *k_out, double *qh_out, double *ql_out) {
    double k = rint(x / (DD_L[0] + DD_L[1]));
    double r1 = x - k * DD_L[0];
    double rh, rl;
    dd_two_sum(r1, -(k * DD_L[1]), &rh, &rl);
    dd_fast_two_sum(rh, rl - k * DD_L[2], &rh, &rl);
    double sh = rh / 256.0, sl = rl / 256.0; /* 2**SQUARINGS */
    double qh = DD_C[11][0], ql = DD_C[11][1];
    for (int n = 10; n >= 0; n--) {
        dd_mul(qh, ql, sh, sl, &qh, &ql);
        dd_add(qh, ql, DD_C[n][0], DD_C[n][1], &qh, &ql);
    }
    dd_mul(qh, ql, sh, sl, &qh, &ql);
    for (int n = 0; n < 8; n++) {
        double th, tl;
        dd_add(2.0, 0.0, qh, ql, &th, &tl);
        dd_mul(qh, ql, th, tl, &qh, &ql);
    }
    *k_out = k; *qh_out = qh; *ql_out = ql;
}

/* doubledouble.exp (x in [-670, 709]): 2**k (1 + q) (_scaled) */
static void dd_exp(double x, double *h, double *l) {
    double k, qh, ql, eh, el;
    dd_exp_parts(x, &k, &qh, &ql);
    dd_add(1.0, 0.0, qh, ql, &eh, &el);
    *h = ldexp(eh, (int)k);
    *l = ldexp(el, (int)k);
}

/* crmath._double_double's decision on a double-double (h, lo) within 2**-90 (doubledouble.REL_ERROR): 1 and *out
 * where h + (lo -+ E |h|) round alike (and are finite) */
static int dd_decided(double h, double lo, double *out) {
    double err = fabs(h) * 0x1p-90;
    double down = h + (lo - err), up = h + (lo + err);
    if (down == up && fabs(down) < INFINITY) {
        *out = down;
        return 1;
    }
    return 0;
}

/* stage 2: doubledouble.exp(x) for x in [-670, 709] and crmath._double_double's decision; 1 and *out where
 * decided */
static int exp64_dd(double x, double *out) {
    if (!(x >= -670.0 && x <= 709.0)) return 0;
    double h, lo;
    dd_exp(x, &h, &lo);
    return dd_decided(h, lo, out);
}

#if LDBL_MANT_DIG == 64 && (defined(__x86_64__) || defined(__i386__))
/* doubledouble.log / log1p from the longdouble w (one Newton step: _newton_near, _newton_far, their operations in
 * the same order), decided as crmath._double_double: log's domain [2**-960, 2**966], log1p's (-1, 2**966] with
 * |t| >= 2**-500 (doubledouble.within); 1 and *out where decided */
static int log_dd(double x, int one, long double w, double *out) {
    if (one ? !(x > -1.0 && x <= 0x1p966 && fabs(x) >= 0x1p-500) : !(x >= 0x1p-960 && x <= 0x1p966)) return 0;
    double yh = (double)w, yl = (double)(w - (long double)yh); /* (_split_wide) */
    double t = one ? x : x - 1.0; /* (log of x in [1/2, 2]: log1p(x - 1), exact by Sterbenz) */
    int near = one ? (t >= -0.5) & (t <= 1.0) : (x >= 0.5) & (x <= 2.0);
    double rh, rl;
    if (near) { /* _newton_near(t, yh, yl): m = e**-yh - 1 (expm1), corrected for yl; t + m + t m */
        double k, mh, ml, ch, cl, ah, al, bh, bl, dh, dl;
        dd_exp_parts(-yh, &k, &mh, &ml);
        if (k != 0.0) { /* (expm1: 2**k (1 + q) - 1 where k != 0) */
            double eh, el;
            dd_add(1.0, 0.0, mh, ml, &eh, &el);
            eh = ldexp(eh, (int)k);
            el = ldexp(el, (int)k);
            dd_add(eh, el, -1.0, 0.0, &mh, &ml);
        }
        dd_mul(mh + 1.0, ml, -yl, yl * yl / 2, &ch, &cl);
        dd_add(mh, ml, ch, cl, &mh, &ml);
        dd_mul(t, 0.0, mh, ml, &ah, &al);
        dd_add(t, 0.0, mh, ml, &bh, &bl);
        dd_add(ah, al, bh, bl, &dh, &dl);
        dd_add(yh, yl, dh, dl, &rh, &rl);
    } else { /* _newton_far(u, yh, yl), u = x, or 1 + t exactly (TwoSum) */
        double uh = x, ul = 0.0, eh, el, ch, cl, ph, pl, dh, dl;
        if (one) dd_two_sum(1.0, t, &uh, &ul);
        dd_exp(-yh, &eh, &el); /* _exp_minus: e**-yh (1 - yl + yl**2 / 2) */
        dd_two_sum(1.0, -yl, &ch, &cl);
        dd_mul(eh, el, ch, cl + yl * yl / 2, &eh, &el);
        dd_mul(uh, ul, eh, el, &ph, &pl);
        dd_add(ph, pl, -1.0, 0.0, &dh, &dl);
        dd_add(yh, yl, dh, dl, &rh, &rl);
    }
    return dd_decided(rh, rl, out);
}
#endif

/* one argument stage 1 left: 1 and *out set, 0 the row is left to numpy (flag 2), -1 on a Python error */
static int exp64_fix(PyObject *fix, Py_ssize_t *budget, double x, double *out) {
    if (x >= 710.0) { *out = INFINITY; return 1; } /* (the row is not ordinary) */
    if (x <= -746.0) { *out = 0.0; return 1; }
    if (exp64_dd(x, out)) return 1;
    if (*budget <= 0) return 0;
    (*budget)--;
    PyObject *got = PyObject_CallFunction(fix, "d", x);
    if (got == NULL) return -1;
    double v = PyFloat_AsDouble(got);
    Py_DECREF(got);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    *out = v;
    return 1;
}

/* e = exp(a) on B rows of K: flag 1 kept where every exp is in (0, inf), 0 where not, 2 where left to numpy */
static inline int exps64(PyObject *fix, Py_ssize_t *budget, const double *restrict a, double *restrict e,
                         uint8_t *restrict dec, Py_ssize_t B, Py_ssize_t K, uint8_t *restrict flag) {
    Py_ssize_t n = B * K, decided = 0;
    exp64_block(a, e, dec, n);
    for (Py_ssize_t j = 0; j < n; j++) decided += dec[j];
    if (decided != n)
        for (Py_ssize_t j = 0; j < n; j++)
            if (!dec[j] && flag[j / K] == 1) {
                int got = exp64_fix(fix, budget, a[j], e + j);
                if (got < 0) return -1;
                if (got == 0) flag[j / K] = 2;
            }
    for (Py_ssize_t i = 0; i < B; i++) {
        const double *ei = e + i * K;
        Py_ssize_t good = 0;
        for (Py_ssize_t j = 0; j < K; j++) good += (ei[j] > 0.0) & (ei[j] < INFINITY);
        if (good != K && flag[i] == 1) flag[i] = 0;
    }
    return 0;
}

/* the pairwise tree of e[0..n) (as tree(), in float64), and the sum with leaf k set to 0 in *dropped */
static inline double tree64(const double *e, double *b, double *t, Py_ssize_t n, Py_ssize_t k, double *dropped) {
    double v = 0.0;
    const double *src = e;
    double *dst = t, *other = b;
    Py_ssize_t at = k;
    while (n > 1) {
        v = v + ((at ^ 1) < n ? src[at ^ 1] : 0.0);
        at >>= 1;
        Py_ssize_t h = n >> 1;
        for (Py_ssize_t i = 0; i < h; i++) dst[i] = src[2 * i] + src[2 * i + 1];
        if (n & 1) dst[h++] = src[n - 1] + 0.0;
        n = h;
        src = dst;
        dst = other;
        other = (double *)src;
    }
    *dropped = v;
    return src[0];
}

/* Rows of at most SHORT_K logits in float64, SHORT_R at a time, transposed (as rows_short: each step a loop over the
 * tile's rows of one column, vectorized); the same operations on the same operands as rows_block64 */
typedef struct {
    double xt[SHORT_K][SHORT_R], zt[SHORT_K][SHORT_R], et[SHORT_K][SHORT_R];
    double lv[2][SHORT_K / 2 + 1][SHORT_R];
    double m[SHORT_R], v[SHORT_R];
    int32_t at[SHORT_R], ok[SHORT_R];
    uint8_t dec[SHORT_R];
} Tile64;

/* et = exp(a) on the n rows of the tile: ok[r] kept where row r's exps are in (0, inf), 0 where not, 2 where left to
 * numpy; -1 on a Python error */
static inline int exps_tile64(PyObject *fix, Py_ssize_t *budget, Tile64 *T, double (*a)[SHORT_R], Py_ssize_t n,
                              Py_ssize_t K) {
    for (Py_ssize_t j = 0; j < K; j++) {
        double *restrict e = T->et[j];
        const double *restrict aj = a[j];
        uint8_t *restrict dec = T->dec;
        exp64_block(aj, e, dec, n);
        Py_ssize_t decided = 0;
        for (Py_ssize_t r = 0; r < n; r++) decided += dec[r];
        if (decided != n)
            for (Py_ssize_t r = 0; r < n; r++)
                if (!dec[r] && T->ok[r] == 1) {
                    int got = exp64_fix(fix, budget, aj[r], e + r);
                    if (got < 0) return -1;
                    if (got == 0) T->ok[r] = 2;
                }
        int32_t *restrict ok = T->ok;
        for (Py_ssize_t r = 0; r < n; r++) {
            int bad = !((e[r] > 0.0) & (e[r] < INFINITY)) & (ok[r] == 1);
            ok[r] = bad ? 0 : ok[r];
        }
    }
    return 0;
}

/* the tree of the columns of T->et over the n rows (as tree_tile, in float64) */
static inline void tree_tile64(Tile64 *T, Py_ssize_t n, Py_ssize_t K, int drop, double *restrict out) {
    double(*src)[SHORT_R] = T->et;
    int which = 0;
    Py_ssize_t len = K;
    int32_t at[SHORT_R];
    if (drop)
        for (Py_ssize_t r = 0; r < n; r++) { T->v[r] = 0.0; at[r] = T->at[r]; }
    while (len > 1) {
        double(*dst)[SHORT_R] = T->lv[which];
        if (drop)
            for (Py_ssize_t r = 0; r < n; r++) {
                int32_t sib = at[r] ^ 1;
                double sv = sib < len ? src[sib][r] : 0.0;
                T->v[r] = T->v[r] + sv;
                at[r] >>= 1;
            }
        Py_ssize_t h = len >> 1;
        for (Py_ssize_t i = 0; i < h; i++) {
            const double *restrict s0 = src[2 * i], *restrict s1 = src[2 * i + 1];
            double *restrict d = dst[i];
            for (Py_ssize_t r = 0; r < n; r++) d[r] = s0[r] + s1[r];
        }
        if (len & 1) {
            const double *restrict s0 = src[len - 1];
            double *restrict d = dst[h];
            for (Py_ssize_t r = 0; r < n; r++) d[r] = s0[r] + 0.0;
            h++;
        }
        src = dst;
        which ^= 1;
        len = h;
    }
    for (Py_ssize_t r = 0; r < n; r++) out[r] = src[0][r];
}

/* n <= SHORT_R rows of K <= SHORT_K float32 logits: as rows_block64 */
CLONES static int rows_short64(PyObject *fix, Py_ssize_t *budget, Tile64 *T, const float *restrict x, Py_ssize_t n,
                               Py_ssize_t K, const int64_t *restrict y, uint8_t *restrict flag, double *restrict o,
                               Py_ssize_t stride) {
    for (Py_ssize_t r = 0; r < n; r++)
        for (Py_ssize_t j = 0; j < K; j++) T->xt[j][r] = (double)x[r * K + j];
    int32_t *restrict ok = T->ok;
    for (Py_ssize_t r = 0; r < n; r++) ok[r] = (y[r] >= 0) & (y[r] < K);
    for (Py_ssize_t j = 0; j < K; j++) {
        const double *restrict xj = T->xt[j];
        for (Py_ssize_t r = 0; r < n; r++) ok[r] &= fabs(xj[r]) <= DBL_MAX;
    }
    double *restrict m = T->m;
    int32_t *restrict at = T->at;
    for (Py_ssize_t r = 0; r < n; r++) { m[r] = -INFINITY; at[r] = 0; }
    for (Py_ssize_t j = 0; j < K; j++) { /* a strict > keeps the first maximum */
        const double *restrict xj = T->xt[j];
        for (Py_ssize_t r = 0; r < n; r++) {
            int up = xj[r] > m[r];
            m[r] = up ? xj[r] : m[r];
            at[r] = up ? (int32_t)j : at[r];
        }
    }
    for (Py_ssize_t j = 0; j < K; j++) {
        const double *restrict xj = T->xt[j];
        double *restrict zj = T->zt[j];
        for (Py_ssize_t r = 0; r < n; r++) zj[r] = xj[r] - m[r];
    }
    for (Py_ssize_t r = 0; r < n; r++) /* (rows not whole: any finite stand-in, their values are not read) */
        if (!ok[r]) {
            at[r] = 0;
            for (Py_ssize_t j = 0; j < K; j++) T->zt[j][r] = 0.0, T->xt[j][r] = 0.0;
        }
    if (exps_tile64(fix, budget, T, T->zt, n, K) < 0) return -1;
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t yr = ok[r] ? (Py_ssize_t)y[r] : 0;
        o[4 * stride + r] = T->et[yr][r];
        o[5 * stride + r] = T->zt[yr][r];
    }
    tree_tile64(T, n, K, 1, o);
    for (Py_ssize_t r = 0; r < n; r++) o[stride + r] = T->v[r];
    if (exps_tile64(fix, budget, T, T->xt, n, K) < 0) return -1;
    for (Py_ssize_t r = 0; r < n; r++) o[3 * stride + r] = T->et[ok[r] ? (Py_ssize_t)y[r] : 0][r];
    tree_tile64(T, n, K, 0, o + 2 * stride);
    for (Py_ssize_t r = 0; r < n; r++) flag[r] = (uint8_t)ok[r];
    return 0;
}

/* B rows of K float32 logits: flag[i] and, where 1, the six sums o[q * stride + i] in float64 (as rows_block) */
CLONES static int rows_block64(PyObject *fix, Py_ssize_t *budget, const float *restrict x, Py_ssize_t B,
                               Py_ssize_t K, const int64_t *restrict y, double *restrict a, double *restrict xl,
                               double *restrict e, double *restrict b, double *restrict t, uint8_t *restrict dec,
                               Py_ssize_t *restrict top, uint8_t *restrict flag, double *restrict o,
                               Py_ssize_t stride) {
    for (Py_ssize_t i = 0; i < B; i++) {
        const float *xi = x + i * K;
        double *ai = a + i * K, *li = xl + i * K;
        Py_ssize_t whole = 0;
        for (Py_ssize_t j = 0; j < K; j++) whole += fabsf(xi[j]) <= FLT_MAX;
        for (Py_ssize_t j = 0; j < K; j++) li[j] = (double)xi[j];
        flag[i] = (uint8_t)(whole == K && y[i] >= 0 && y[i] < K);
        if (!flag[i]) {
            memset(ai, 0, sizeof(double) * (size_t)K);
            memset(li, 0, sizeof(double) * (size_t)K);
            continue;
        }
        float mf;
        top[i] = first_max(xi, K, &mf); /* (the float32 maximum's first index: that of its float64 value) */
        double m = (double)mf;
        for (Py_ssize_t j = 0; j < K; j++) ai[j] = li[j] - m;
    }
    if (exps64(fix, budget, a, e, dec, B, K, flag) < 0) return -1;
    for (Py_ssize_t i = 0; i < B; i++) {
        if (flag[i] != 1) continue;
        double S1, S = tree64(e + i * K, b, t, K, top[i], &S1);
        o[i] = S;
        o[stride + i] = S1;
        o[4 * stride + i] = e[i * K + y[i]];
        o[5 * stride + i] = a[i * K + y[i]];
    }
    if (exps64(fix, budget, xl, e, dec, B, K, flag) < 0) return -1;
    for (Py_ssize_t i = 0; i < B; i++) {
        if (flag[i] != 1) continue;
        double unused;
        o[2 * stride + i] = tree64(e + i * K, b, t, K, 0, &unused);
        o[3 * stride + i] = e[i * K + y[i]];
    }
    return 0;
}

/* softmax_sums64(rows, K, x float32, y int64, out (6, rows) float64, flag uint8, fix, budget) -> calls of fix */
static PyObject *softmax_sums64(PyObject *self, PyObject *args) {
    Py_ssize_t rows, K, budget;
    Py_buffer xb, yb, ob, fb;
    PyObject *fix;
    if (!PyArg_ParseTuple(args, "nny*y*w*w*On", &rows, &K, &xb, &yb, &ob, &fb, &fix, &budget)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t B = K >= BLOCK_VALUES ? 1 : BLOCK_VALUES / (K > 0 ? K : 1);
    double *a = NULL, *xl = NULL, *e = NULL, *b = NULL, *t = NULL;
    Py_ssize_t *top = NULL;
    uint8_t *dec = NULL;
    if (rows < 0 || K < 1 || xb.len != rows * K * 4 || yb.len != rows * 8 || ob.len != 6 * rows * 8
        || fb.len != rows || !exp64_ready) {
        PyErr_SetString(PyExc_ValueError, "softmax_sums64: buffers of the wrong size, or no exp64 constants");
        goto done;
    }
    a = (double *)malloc(sizeof(double) * (size_t)(B * K));
    xl = (double *)malloc(sizeof(double) * (size_t)(B * K));
    e = (double *)malloc(sizeof(double) * (size_t)(B * K));
    b = (double *)malloc(sizeof(double) * (size_t)(K / 2 + 1));
    t = (double *)malloc(sizeof(double) * (size_t)(K / 2 + 1));
    top = (Py_ssize_t *)malloc(sizeof(Py_ssize_t) * (size_t)B);
    dec = (uint8_t *)malloc((size_t)(B * K));
    if (!a || !xl || !e || !b || !t || !top || !dec) { PyErr_NoMemory(); goto done; }
    const float *x = (const float *)xb.buf;
    const int64_t *y = (const int64_t *)yb.buf;
    double *o = (double *)ob.buf;
    uint8_t *flag = (uint8_t *)fb.buf;
    Py_ssize_t left = budget;
    if (K <= SHORT_K) {
        Tile64 *T = (Tile64 *)malloc(sizeof(Tile64));
        if (T == NULL) { PyErr_NoMemory(); goto done; }
        int failed = 0;
        for (Py_ssize_t i = 0; i < rows && !failed; i += SHORT_R) {
            Py_ssize_t here = rows - i < SHORT_R ? rows - i : SHORT_R;
            failed = rows_short64(fix, &left, T, x + i * K, here, K, y + i, flag + i, o + i, rows) < 0;
        }
        free(T);
        if (failed) goto done;
    } else
    for (Py_ssize_t i = 0; i < rows; i += B) {
        Py_ssize_t here = rows - i < B ? rows - i : B;
        if (rows_block64(fix, &left, x + i * K, here, K, y + i, a, xl, e, b, t, dec, top, flag + i, o + i, rows) < 0)
            goto done;
    }
    result = PyLong_FromSsize_t(budget - left);
done:
    free(a); free(xl); free(e); free(b); free(t); free(top); free(dec);
    PyBuffer_Release(&xb); PyBuffer_Release(&yb); PyBuffer_Release(&ob); PyBuffer_Release(&fb);
    return result;
}

/* set_exp64_constants(T_hi bytes, T_lo bytes, INV, C1, C2, (L1, L2, L3) bytes, Taylor 1/n! pairs bytes (12 x 2),
 * crmath.LOG64_ERROR) */
static PyObject *set_exp64_constants(PyObject *self, PyObject *args) {
    Py_buffer hb, lb, db, cb;
    double inv, c1, c2, log_error;
    if (!PyArg_ParseTuple(args, "y*y*dddy*y*d", &hb, &lb, &inv, &c1, &c2, &db, &cb, &log_error)) return NULL;
    PyObject *result = NULL;
    if (hb.len != 2048 * 8 || lb.len != 2048 * 8 || db.len != 3 * 8 || cb.len != 24 * 8) {
        PyErr_SetString(PyExc_ValueError, "set_exp64_constants: 2048, 2048, 3 and 24 float64 values");
    } else {
        memcpy(X64_HI, hb.buf, 2048 * 8);
        memcpy(X64_LO, lb.buf, 2048 * 8);
        memcpy(DD_L, db.buf, 3 * 8);
        memcpy(DD_C, cb.buf, 24 * 8);
        X64_INV = inv; X64_C1 = c1; X64_C2 = c2; X64_LOG_ERROR = log_error;
        exp64_ready = 1;
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&hb); PyBuffer_Release(&lb); PyBuffer_Release(&db); PyBuffer_Release(&cb);
    return result;
}

CLONES static void exp64_many_block(const double *x, double *o, uint8_t *d, Py_ssize_t n) {
    exp64_block(x, o, d, n);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!d[i]) d[i] = (uint8_t)(2 * exp64_dd(x[i], o + i));
}

/* exp64_many(x float64, out float64, stage uint8): the kernel's float64 exp of each value, for the tests
 * (stage 1 or 2 where decided there, 0 where left to crmath) */
static PyObject *exp64_many(PyObject *self, PyObject *args) {
    Py_buffer xb, ob, db;
    if (!PyArg_ParseTuple(args, "y*w*w*", &xb, &ob, &db)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = xb.len / 8;
    if (!exp64_ready || ob.len != xb.len || db.len != n) {
        PyErr_SetString(PyExc_ValueError, "exp64_many: buffers of the wrong size, or no exp64 constants");
    } else {
        exp64_many_block((const double *)xb.buf, (double *)ob.buf, (uint8_t *)db.buf, n);
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&xb); PyBuffer_Release(&ob); PyBuffer_Release(&db);
    return result;
}

/* log64 / log1p64: crmath._log_float64's first stage (its proof there): y0 = the C library's log (log1p), within
 * 2**-44 of the exact value (crmath.WIDE_REL_ERROR; here log_wide's or log1p_wide's value: see y0 below), one Newton step on e**y = X with exp64_pair(-y0) (X = x, or 1 + x = a + al exactly),
 * c = fl(fl(ph - 1) + fl(fl(pe + fl(a fl(err 2**e))) + fl(al W))), (hi, lo) = Fast2Sum(y0, c), decided where
 * hi + (lo -+ B) round alike, B = 2**-78 |hi| + crmath.LOG64_ERROR (set_exp64_constants), and |y0| >= 2**-40; log 1 = +0 and
 * log1p 0 = 0 (its sign kept) exactly; log of x within 2**-7 of 1 and log1p of x <= 2**-7 by log1p_near (Newton's
 * absolute bound decides few of those).  Domains: log [2**-990, 2**990], log1p [0, 2**990] (crmath's is [-0.5, 2**990]:
 * the tail's log1p arguments are sums, >= 0); elsewhere undecided. */
/* log1p t for 2**-480 <= |t| <= 2**-7 (*dec = 1 where decided; 0 elsewhere), correctly rounded where decided: the
 * results crmath leaves to its longdouble path (log of x near 1, t = x - 1, exact by Sterbenz's lemma; log1p of
 * a tiny sum).  log1p t = t - t**2/2 + t**3 Q(t), Q = sum_{n=3..11} (-1)**(n+1) t**(n-3) / n (truncation below
 * |t|**12 / 12 <= 2**-80 |t|).  t**2 = p + pe exactly (Dekker; pe normal as |t| >= 2**-480), h2 = -p/2 and
 * l2 = -pe/2 exact; Q by Horner in float64 (coefficients rounded, |t| <= 2**-7: within 2**-51.9 of Q, |Q| <= 0.34);
 * r3 = fl(fl(t p) Q) within 2**-50.6 relative of t**3 Q (dropping pe: 2**-53), so within 2**-66.1 |t|
 * (|t**3 Q| <= 2**-15.5 |t|).  (s1, e1) = TwoSum(t, h2) exactly; w = fl(l2 + r3) and lo = fl(e1 + w) round by at
 * most 2**-68.4 |t| each; (hi, lo2) = Fast2Sum(s1, lo) exactly (|s1| >= |t| (1 - 2**-8) > |lo|).  In all
 * |hi + lo2 - log1p t| <= 2**-65.5 |t| <= 2**-65.3 |hi|; with B = 2**-63 |hi| (margin 2**2.3 for the roundings
 * of lo2 -+ B, at most 2**-105 |hi|), hi + (lo2 -+ B) bracket the exact value after rounding (monotonicity, as
 * crmath._log_float64's test): equal, they are its correct rounding. */
INLINE double log1p_near(double t, int *dec) {
    double p, pe, s1, e1, hi, lo2;
    dd_two_prod(t, t, &p, &pe);
    double h2 = -0.5 * p, l2 = -0.5 * pe;
    double Q = t * (1.0 / 11.0);
    Q = t * (-1.0 / 10.0 + Q);
    Q = t * (1.0 / 9.0 + Q);
    Q = t * (-1.0 / 8.0 + Q);
    Q = t * (1.0 / 7.0 + Q);
    Q = t * (-1.0 / 6.0 + Q);
    Q = t * (1.0 / 5.0 + Q);
    Q = t * (-1.0 / 4.0 + Q);
    Q = 1.0 / 3.0 + Q;
    double r3 = (t * p) * Q;
    dd_two_sum(t, h2, &s1, &e1);
    double w = l2 + r3;
    double lo = e1 + w;
    dd_fast_two_sum(s1, lo, &hi, &lo2);
    double B = fabs(hi) * 0x1p-63;
    double down = hi + (lo2 - B), up = hi + (lo2 + B);
    *dec = (down == up) & (fabs(t) >= 0x1p-480) & (fabs(t) <= 0x1p-7);
    return down;
}

INLINE double log64(double x, int one, int *dec) {
    /* y0: log_wide / log1p_wide above: within 2**-50 relative where their proof at log32 holds (log_wide of any
     * positive normal float64; log1p_wide below 2**-7), within 2**-45.9 for log1p_wide's float64 arguments above
     * (there 1 + s is rounded: 2**-53 of 1 + s moves the log by at most 2**-53 / log1p(2**-7) relative; measured by
     * review8 at 2**-46.0): both inside the 2**-44 the Newton step's proof assumes */
    double y0 = one ? log1p_wide(x) : log_wide(x);
    int in = one ? (x >= 0.0) & (x <= 0x1p990) : (x >= 0x1p-990) & (x <= 0x1p990);
    double err, ph, pe, a = x, al = 0.0;
    int64_t e;
    if (one) dd_two_sum(1.0, x, &a, &al);
    double s = exp64_pair(in ? -y0 : 0.0, &err, &e);
    double p2 = d_of((uint64_t)(e + 1023) << 52);
    double W = s * p2;
    dd_two_prod(a, W, &ph, &pe);
    double rest = pe + a * (err * p2);
    if (one) rest += al * W;
    double c = (ph - 1.0) + rest, hi, lo;
    dd_fast_two_sum(y0, c, &hi, &lo);
    double bound = fabs(hi) * 0x1p-78 + X64_LOG_ERROR;
    double down = hi + (lo - bound), up = hi + (lo + bound);
    int exact = one ? x == 0.0 : x == 1.0;
    *dec = exact | (in & (down == up) & (fabs(y0) >= 0x1p-40));
    return exact ? (one ? x : 0.0) : down;
}

/* log64's value of x within 2**-7 of 1 (log) or in [0, 2**-7] (log1p): log1p_near's, in place of *v and *dec (a
 * pass of its own after log64's: in one loop with it the compiler computes one of the two under a mask and no longer
 * vectorizes) */
INLINE void log64_near(double x, int one, double *v, uint8_t *dec) {
    int near_dec;
    double t = one ? x : x - 1.0; /* (exact where |x - 1| <= 2**-7) */
    double near = log1p_near(t, &near_dec);
    int use = (fabs(t) <= 0x1p-7) & (x >= 0.0) & (one ? x != 0.0 : x != 1.0); /* (0 and 1: exact in log64) */
    *v = use ? near : *v;
    *dec = (uint8_t)(use ? near_dec : *dec);
}

/* The second stage of log64 / log1p64, where the C long double is the x87 format (64-bit significand), as crmath's
 * longdouble path: w = logl(x) (log1pl), within 2**-60 of the exact value (crmath.WIDE_REL_ERROR["longdouble"], the
 * bound the project assumes of the C library's long double functions); decided as crmath._decided_by_bits decides
 * it: where w's 11 dropped bits L are farther than ceil(2**-60 2**64) + 1 = 17 from the midpoint 2**10 and |w| is a
 * normal float64 below the top binade, the rounding (double)w is the correctly rounded value; elsewhere crmath's
 * next stage, log_dd (*dec = 3 where it decides).  Without x87, undecided. */
static double log_x87(double x, int one, int *dec) {
#if LDBL_MANT_DIG == 64 && (defined(__x86_64__) || defined(__i386__))
    long double w = one ? log1pl((long double)x) : logl((long double)x);
    uint64_t mant;
    memcpy(&mant, &w, 8); /* (the x87 format's low 8 bytes: the significand, explicit leading bit) */
    int64_t L = (int64_t)(mant & 2047) - 1024;
    long double a = fabsl(w);
    *dec = (L > 17 || L < -17) && a >= (long double)DBL_MIN && a < (long double)0x1p1023;
    double v = (double)w;
    if (!*dec && a < (long double)0x1p1023) /* crmath's next stage: the double-double Newton step from w */
        *dec = log_dd(x, one, w, &v) ? 3 : 0;
    return v;
#else
    (void)x; (void)one;
    *dec = 0;
    return 0.0;
#endif
}

CLONES static void log64_many_block(const double *restrict x, double *restrict o, uint8_t *restrict d, Py_ssize_t n,
                                    int one) {
    if (one) {
        for (Py_ssize_t i = 0; i < n; i++) {
            int dec;
            o[i] = log64(x[i], 1, &dec);
            d[i] = (uint8_t)dec;
        }
        for (Py_ssize_t i = 0; i < n; i++) log64_near(x[i], 1, o + i, d + i);
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            int dec;
            o[i] = log64(x[i], 0, &dec);
            d[i] = (uint8_t)dec;
        }
        for (Py_ssize_t i = 0; i < n; i++) log64_near(x[i], 0, o + i, d + i);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!d[i] && x[i] > 0.0 && x[i] < INFINITY) {
            int dec;
            double v = log_x87(x[i], one, &dec);
            if (dec) { o[i] = v; d[i] = (uint8_t)(dec == 3 ? 3 : 2); }
        }
}

/* log64_many(x float64, out float64, decided uint8, log1p): the kernel's float64 log (log1p), for the tests (decided:
 * 1 by log64, 2 by the x87 stage, 3 by the double-double stage after it) */
static PyObject *log64_many(PyObject *self, PyObject *args) {
    Py_buffer xb, ob, db;
    int one;
    if (!PyArg_ParseTuple(args, "y*w*w*p", &xb, &ob, &db, &one)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = xb.len / 8;
    if (!exp64_ready || !log_ready || ob.len != xb.len || db.len != n) {
        PyErr_SetString(PyExc_ValueError, "log64_many: buffers of the wrong size, or no exp64 / log constants");
    } else {
        log64_many_block((const double *)xb.buf, (double *)ob.buf, (uint8_t *)db.buf, n, one);
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&xb); PyBuffer_Release(&ob); PyBuffer_Release(&db);
    return result;
}

/* softmax_tail64(n, sums (6, n) float64, out (4, n) float64, flag uint8 in/out): tail_block in float64 (softmax_bulk.
 * _tail, rnd the identity) with log64 / log1p64, in blocks of TAIL64 rows, each step a loop of its own (the compiler
 * vectorizes those; one loop with the four logs it does not); a row with an undecided log is left to numpy (flag 2) */
#define TAIL64 512
CLONES static void tail_block64(Py_ssize_t n, const double *restrict sums, double *restrict o,
                                uint8_t *restrict flag) {
    const double *S = sums, *S1 = sums + n, *Sn = sums + 2 * n, *exy = sums + 3 * n, *ezy = sums + 4 * n,
                 *zy = sums + 5 * n;
    double rn[TAIL64], rs[TAIL64], l[4][TAIL64];
    uint8_t d[4][TAIL64];
    for (Py_ssize_t i0 = 0; i0 < n; i0 += TAIL64) {
        Py_ssize_t b = n - i0 < TAIL64 ? n - i0 : TAIL64;
        for (Py_ssize_t i = 0; i < b; i++) {
            rn[i] = exy[i0 + i] / Sn[i0 + i];
            rs[i] = ezy[i0 + i] / S[i0 + i];
        }
        for (Py_ssize_t i = 0; i < b; i++) { int dec; l[0][i] = log64(rn[i], 0, &dec); d[0][i] = (uint8_t)dec; }
        for (Py_ssize_t i = 0; i < b; i++) { int dec; l[1][i] = log64(rs[i], 0, &dec); d[1][i] = (uint8_t)dec; }
        for (Py_ssize_t i = 0; i < b; i++) { int dec; l[2][i] = log64(S[i0 + i], 0, &dec); d[2][i] = (uint8_t)dec; }
        for (Py_ssize_t i = 0; i < b; i++) { int dec; l[3][i] = log64(S1[i0 + i], 1, &dec); d[3][i] = (uint8_t)dec; }
        for (Py_ssize_t i = 0; i < b; i++) log64_near(rn[i], 0, l[0] + i, d[0] + i);
        for (Py_ssize_t i = 0; i < b; i++) log64_near(rs[i], 0, l[1] + i, d[1] + i);
        for (Py_ssize_t i = 0; i < b; i++) log64_near(S[i0 + i], 0, l[2] + i, d[2] + i);
        for (Py_ssize_t i = 0; i < b; i++) log64_near(S1[i0 + i], 1, l[3] + i, d[3] + i);
        for (int q = 0; q < 4; q++) { /* the few left undecided: the x87 stage */
            const double *arg = q == 0 ? rn : q == 1 ? rs : q == 2 ? S + i0 : S1 + i0;
            for (Py_ssize_t i = 0; i < b; i++)
                if (!d[q][i] && arg[i] > 0.0 && arg[i] < INFINITY) {
                    int dec;
                    double v = log_x87(arg[i], q == 3, &dec);
                    if (dec) { l[q][i] = v; d[q][i] = 1; }
                }
        }
        for (Py_ssize_t i = 0; i < b; i++) {
            Py_ssize_t r = i0 + i;
            int ok = (S[r] < INFINITY) & (Sn[r] < INFINITY) & (rn[i] > 0.0) & (rn[i] < INFINITY) & (rs[i] > 0.0)
                     & (rs[i] < INFINITY);
            double v0 = -l[0][i], v1 = -l[1][i], v2 = l[2][i] - zy[r], v3 = l[3][i] - zy[r];
            ok &= ((l[3][i] != 0.0) | (S1[r] == 0.0)) & (fabs(v0) < INFINITY) & (fabs(v1) < INFINITY)
                  & (fabs(v2) < INFINITY) & (fabs(v3) < INFINITY);
            int f = flag[r], dec = d[0][i] & d[1][i] & d[2][i] & d[3][i];
            flag[r] = (uint8_t)(f != 1 ? f : !ok ? 0 : dec ? 1 : 2);
            o[r] = v0; o[n + r] = v1; o[2 * n + r] = v2; o[3 * n + r] = v3;
        }
    }
}

static PyObject *softmax_tail64(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    Py_buffer sb, ob, fb;
    if (!PyArg_ParseTuple(args, "ny*w*w*", &n, &sb, &ob, &fb)) return NULL;
    PyObject *result = NULL;
    if (n < 0 || sb.len != 6 * n * 8 || ob.len != 4 * n * 8 || fb.len != n || !exp64_ready || !log_ready) {
        PyErr_SetString(PyExc_ValueError, "softmax_tail64: buffers of the wrong size, or no exp64 / log constants");
    } else {
        tail_block64(n, (const double *)sb.buf, (double *)ob.buf, (uint8_t *)fb.buf);
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&sb); PyBuffer_Release(&ob); PyBuffer_Release(&fb);
    return result;
}

/* ref_expsum64: the float64 tier of softmax_ce's float64 reference (experiments/softmax_ce.bounded_cross_entropy,
 * numerics/expsum64.log1p_exp_sum's steps 1-4), per row of float64 logits X (rows, K), 2 <= K <= 2**20, labels y:
 *   exact[i]: softmax_ce._rows_differences_exact (every x's low 29 significand bits 0 -- in the whole block, or no
 *     row is --, the smallest |x| at least 2**-1000 and the largest below 2**(floor(log2 smallest) + 29));
 *   d = x - m (m the row's max, k its first argmax; d = 0 in a row not exact), g = -d_y, d2 = max of d but d_k;
 *   with d2' = d2 where d2 >= -600 (expsum64.FLOOR), else 0: E = floor(d2' log2e) + 2, C = 1.5 2**(E + L)
 *     (L = ceil(log2 K), log2e numpy's np.log2(np.e), passed in);
 *   per term (k's left out): exp64_pair(max(d, -707)) = (s, err, e), T = s 2**e, F = err 2**e,
 *     H = (T + C) - C, R' = (T - H) + F; A = sum of H (exact in any order), B = the pairwise tree of R'
 *     (softmax_ce._tree_sum's pairs: an odd level's last term plus 0).
 * The same float64 operations as the numpy code, so the same A, B, d2, g bit for bit (tests/test_softmax_kernel.py).
 * out: (4, rows) float64 A, B, d2, g; exact: uint8. */
/* the pairs of exp64_pair on n arguments (a loop of its own: vectorized) */
INLINE void exp64_pairs(const double *restrict x, double *restrict s, double *restrict err, int64_t *restrict e,
                        Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) s[i] = exp64_pair(x[i], err + i, e + i);
}

/* rows of X in blocks of about BLOCK_VALUES values: each row's test, max and d first, the block's pairs in one pass,
 * then each row's sums; scratch d, s, err (B K float64), e (B K int64), R (K), b and t (K / 2 + 1), and per row of
 * the block top, C */
CLONES static void ref_expsum64_block(Py_ssize_t rows, Py_ssize_t K, const double *restrict X, const int64_t *y,
                                      double log2e, double *restrict dd, double *restrict s, double *restrict er,
                                      int64_t *restrict ee, double *restrict R, double *restrict b, double *restrict t,
                                      Py_ssize_t *restrict top, double *restrict Cs, double *restrict o,
                                      uint8_t *restrict exact) {
    int low_any = 0;
    Py_ssize_t L = 0;
    while (((Py_ssize_t)1 << L) < (K - 1 > 1 ? K - 1 : 1) + 1) L++; /* (max(K - 1, 1)).bit_length() */
    for (Py_ssize_t i = 0; i < rows; i++) {
        const double *xi = X + i * K;
        uint64_t low = 0;
        double small = INFINITY, big = 0.0;
        int finite = 1; /* (numpy's min and max of |x| are NaN with a NaN: the row is not exact) */
        for (Py_ssize_t j = 0; j < K; j++) {
            double a = fabs(xi[j]);
            low |= dbits_of(xi[j]) & ((1ull << 29) - 1);
            small = a < small ? a : small;
            big = a > big ? a : big;
            finite &= a <= DBL_MAX;
        }
        /* 2**(floor(log2 small) + 29) from small's exponent field (small >= 2**-1000: normal; inf beyond the range) */
        uint64_t field = (dbits_of(small) >> 52) & 0x7FF;
        double top2 = field + 29 >= 0x7FF ? INFINITY : d_of((field + 29) << 52);
        exact[i] = (uint8_t)(finite && low == 0 && small >= 0x1p-1000 && big < top2);
        low_any |= low != 0;
    }
    Py_ssize_t B = K >= BLOCK_VALUES ? 1 : BLOCK_VALUES / K;
    for (Py_ssize_t i0 = 0; i0 < rows; i0 += B) {
        Py_ssize_t nb = rows - i0 < B ? rows - i0 : B;
        for (Py_ssize_t r = 0; r < nb; r++) {
            Py_ssize_t i = i0 + r;
            const double *xi = X + i * K;
            double *di = dd + r * K;
            if (low_any) exact[i] = 0;
            int ok = exact[i];
            Py_ssize_t k = 0;
            double m = xi[0];
            for (Py_ssize_t j = 1; j < K; j++) { /* (without branches: a strict > keeps the first maximum) */
                int up = xi[j] > m;
                m = up ? xi[j] : m;
                k = up ? j : k;
            }
            double d2 = -INFINITY;
            for (Py_ssize_t j = 0; j < K; j++) {
                double d = ok ? xi[j] - m : 0.0;
                d2 = (j != k && d > d2) ? d : d2;
                di[j] = d > -707.0 ? d : -707.0; /* (exp64's domain: expsum64's clamp) */
            }
            top[r] = ok ? k : 0; /* (a row not exact: not handled, any column will do) */
            double dh = d2 >= -600.0 ? d2 : 0.0;
            int64_t n2 = (int64_t)floor(dh * log2e) + 2 + L; /* in [-862, 22]: 1.5 2**n2 is normal */
            Cs[r] = d_of(0x3FF8000000000000ull + ((uint64_t)n2 << 52));
            o[2 * rows + i] = d2;
            o[3 * rows + i] = -(ok ? xi[y[i]] - m : 0.0);
        }
        exp64_pairs(dd, s, er, ee, nb * K);
        for (Py_ssize_t r = 0; r < nb; r++) {
            double C = Cs[r], A = 0.0, unused;
            for (Py_ssize_t j = 0; j < K; j++) {
                Py_ssize_t q = r * K + j;
                double p2 = d_of((uint64_t)(ee[q] + 1023) << 52);
                double T = j == top[r] ? 0.0 : s[q] * p2, F = j == top[r] ? 0.0 : er[q] * p2;
                double H = (T + C) - C;
                R[j] = (T - H) + F;
                A += H;
            }
            o[i0 + r] = A;
            o[rows + i0 + r] = tree64(R, b, t, K, 0, &unused);
        }
    }
}

/* ref_expsum64(rows, K, X float64, y int64, log2e, out (4, rows) float64, exact uint8) */
static PyObject *ref_expsum64(PyObject *self, PyObject *args) {
    Py_ssize_t rows, K;
    double log2e;
    Py_buffer xb, yb, ob, eb;
    if (!PyArg_ParseTuple(args, "nny*y*dw*w*", &rows, &K, &xb, &yb, &log2e, &ob, &eb)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t B = K >= BLOCK_VALUES ? 1 : BLOCK_VALUES / (K > 0 ? K : 1), n = B * K;
    double *R = NULL, *b = NULL, *t = NULL, *dd = NULL, *s = NULL, *er = NULL, *Cs = NULL;
    int64_t *ee = NULL;
    Py_ssize_t *top = NULL;
    if (rows < 0 || K < 2 || K > (1 << 20) || xb.len != rows * K * 8 || yb.len != rows * 8 || ob.len != 4 * rows * 8
        || eb.len != rows || !exp64_ready) {
        PyErr_SetString(PyExc_ValueError, "ref_expsum64: buffers of the wrong size, or no exp64 constants");
    } else if (!(R = (double *)malloc(sizeof(double) * (size_t)K))
               || !(b = (double *)malloc(sizeof(double) * (size_t)(K / 2 + 1)))
               || !(t = (double *)malloc(sizeof(double) * (size_t)(K / 2 + 1)))
               || !(dd = (double *)malloc(sizeof(double) * (size_t)n)) || !(s = (double *)malloc(sizeof(double) * (size_t)n))
               || !(er = (double *)malloc(sizeof(double) * (size_t)n)) || !(ee = (int64_t *)malloc(8 * (size_t)n))
               || !(Cs = (double *)malloc(sizeof(double) * (size_t)B))
               || !(top = (Py_ssize_t *)malloc(sizeof(Py_ssize_t) * (size_t)B))) {
        PyErr_NoMemory();
    } else {
        const int64_t *y = (const int64_t *)yb.buf;
        Py_ssize_t bad = 0;
        for (Py_ssize_t i = 0; i < rows; i++) bad += (y[i] < 0) | (y[i] >= K);
        if (bad) { /* (as the numpy path's take: an error, not a read outside the row) */
            PyErr_SetString(PyExc_ValueError, "ref_expsum64: a label outside [0, K)");
        } else {
            ref_expsum64_block(rows, K, (const double *)xb.buf, y, log2e, dd, s, er, ee, R, b, t, top, Cs,
                               (double *)ob.buf, (uint8_t *)eb.buf);
            result = Py_None;
            Py_INCREF(result);
        }
    }
    free(R); free(b); free(t); free(dd); free(s); free(er); free(ee); free(Cs); free(top);
    PyBuffer_Release(&xb); PyBuffer_Release(&yb); PyBuffer_Release(&ob); PyBuffer_Release(&eb);
    return result;
}

static PyMethodDef methods[] = {
    {"softmax_sums", softmax_sums, METH_VARARGS,
     "softmax_sums(kind, rows, K, x, y, table, xl (bfloat16; float32: empty), out, flag, fix, budget) -> calls of fix"},
    {"argmax_rows", argmax_rows, METH_VARARGS,
     "argmax_rows(rows, K, x float32, out int64, finite uint8): each row's first maximum, NaN as -inf, and "
     "whether all its values are finite"},
    {"softmax_tail", softmax_tail, METH_VARARGS,
     "softmax_tail(kind, n, sums, log table, log1p table, out, flag): the four methods' values from the sums"},
    {"log32_many", log32_many, METH_VARARGS, "log32_many(x, out, decided, log1p)"},
    {"set_log_constants", set_log_constants, METH_VARARGS, "set_log_constants(log c for c = i/128, ln2_hi, ln2_lo)"},
    {"ref_terms", ref_terms, METH_VARARGS, "ref_terms(rows, K, L, y, t, gap, m, top) -> all finite"},
    {"ref_tree", ref_tree, METH_VARARGS, "ref_tree(rows, K, t, top, total): each row's pairwise sum, t_top set to +0"},
    {"set_exp_constants", set_exp_constants, METH_VARARGS, "set_exp_constants(T64, 64/ln2, c_hi, c_lo)"},
    {"exp32_many", exp32_many, METH_VARARGS, "exp32_many(x, out, decided)"},
    {"softmax_sums64", softmax_sums64, METH_VARARGS,
     "softmax_sums64(rows, K, x float32, y, out (6, rows) float64, flag, fix, budget) -> calls of fix"},
    {"set_exp64_constants", set_exp64_constants, METH_VARARGS,
     "set_exp64_constants(T_hi, T_lo, INV, C1, C2, ln2 parts, Taylor pairs)"},
    {"exp64_many", exp64_many, METH_VARARGS, "exp64_many(x, out, stage)"},
    {"log64_many", log64_many, METH_VARARGS, "log64_many(x, out, decided, log1p)"},
    {"softmax_tail64", softmax_tail64, METH_VARARGS,
     "softmax_tail64(n, sums (6, n) float64, out (4, n) float64, flag): the four methods' values in float64"},
    {"ref_expsum64", ref_expsum64, METH_VARARGS,
     "ref_expsum64(rows, K, X float64, y, log2e, out (4, rows) float64: A, B, d2, g, exact uint8)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stabilitylab_kernels",
                                    "stabilitylab's optional compiled kernel (csrc/softmax_values.c)", -1, methods};

PyMODINIT_FUNC PyInit__stabilitylab_kernels(void) {
#if defined(__SSE__) || defined(__x86_64__)
    /* A build linked with -ffast-math / -Ofast sets flush-to-zero and denormals-are-zero when it is loaded (gcc's
     * crtfastmath.o), for the whole process: every subnormal result of stabilitylab would change.  Undo it and
     * refuse to load (setup.py strips those flags; this catches a build made otherwise). */
    unsigned int csr = _mm_getcsr();
    if (csr & 0x8040u) {
        _mm_setcsr(csr & ~0x8040u);
        PyErr_SetString(PyExc_ImportError, "_stabilitylab_kernels was built with fast-math (flush to zero): "
                                           "rebuild it without -ffast-math / -Ofast");
        return NULL;
    }
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API", KERNEL_API) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
