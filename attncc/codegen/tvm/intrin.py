"""TIR building blocks the generated kernels call (plain Python functions that return TIR
expressions, inlined when the generated TVMScript is parsed)."""
from tvm.script import tirx as T

NEG = -1.0e30          # the score of a masked pair
NEG_HALF = -5.0e29     # anything below is masked

_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
# minimax polynomial for exp on [-ln2/2, ln2/2] (Cephes expf coefficients)
_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def live(s, x):
    """x where the score s is not masked, else 0. Masked scores are NEG (or -inf); a NaN
    score is not masked, so x (computed from it) carries the NaN on, as SDPA does."""
    return T.Select(s <= T.float32(NEG_HALF), T.float32(0), x)


def row_lse(mx, sm, log_sm):
    """A row's log-sum-exp from its max, sum and log(sum): -inf for a fully masked row (sum
    0), NaN for a row whose scores held a NaN (sum NaN)."""
    return T.Select(sm > T.float32(0), mx + log_sm,
                    T.Select(sm == T.float32(0), T.reinterpret("float32", T.int32(-8388608)), sm))


def fexp(x):
    """exp(x) in float32 from TIR arithmetic, so LLVM vectorizes it (T.exp on a vector
    becomes scalar libm calls). Inputs below about -87.3 give exactly 0; NaN gives NaN (the
    clamp's constants come first: T.min(a, b) is a < b ? a : b, which would drop a NaN a)."""
    x = T.max(T.float32(-88.37626), T.min(T.float32(88.37626), x))
    n = T.floor(x * T.float32(_LOG2E) + T.float32(0.5))
    r = x - n * T.float32(_LN2_HI) - n * T.float32(_LN2_LO)
    y = T.float32(_P[0])
    for c in _P[1:]:
        y = y * r + T.float32(c)
    y = y * r * r + r + T.float32(1.0)
    return y * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


# ln(1 + f) - f + f^2 / 2 on [sqrt(1/2) - 1, sqrt(2) - 1], over f^3 (Cephes logf coefficients)
_L = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
      -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def flog(x):
    """ln(x) in float32 from TIR arithmetic, so LLVM vectorizes it (T.log on a vector becomes
    scalar libm calls), for normal positive x: x = m 2^e with m in [sqrt(1/2), sqrt(2))."""
    bits = T.reinterpret("int32", x)
    m = T.reinterpret("float32", T.bitwise_or(T.bitwise_and(bits, T.int32(0x007FFFFF)), T.int32(0x3F800000)))
    big = m > T.float32(1.4142135623730951)
    e = T.Cast("float32", T.shift_right(bits, 23) - T.Select(big, 126, 127))
    f = T.Select(big, m * T.float32(0.5), m) - T.float32(1.0)
    z = f * f
    y = T.float32(_L[0])
    for c in _L[1:]:
        y = y * f + T.float32(c)
    y = y * f * z + e * T.float32(_LN2_LO) - T.float32(0.5) * z
    return f + y + e * T.float32(_LN2_HI)


_INF, _NAN = float("inf"), float("nan")
_FLT_MIN = 1.1754943508222875e-38
_LN_MAX = 88.72283935546875     # ln(float32 max): exp overflows above
# tanh(x) = x + x^3 P(x^2) on |x| < 0.625 (Cephes tanhf coefficients)
_TANH = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)


def fexp_any(x):
    """exp(x) for any float32 x (inf above ln(max), subnormals below -87, NaN through), from
    TIR arithmetic so LLVM vectorizes it: exp(x / 2) squared (within 2 ulp), which fexp's
    range covers down to x = -174 (below: 0, as exp underflows). x is read 5 times: nested in
    other expressions, the tree TVM expands stays small."""
    half = fexp(x * T.float32(0.5))
    return T.Select(T.isnan(x), x, T.Select(x > T.float32(_LN_MAX), T.float32(_INF), half * half))


def flog_any(x):
    """ln(x) for any float32 x, as libm gives it (-inf at 0, NaN below 0 and through, inf at
    inf, subnormals scaled into range), vectorizable."""
    sub = x < T.float32(_FLT_MIN)
    r = flog(T.Select(sub, x * T.float32(8388608.0), x)) - T.Select(sub, T.float32(23 * 0.6931471805599453),
                                                                    T.float32(0))
    return T.Select(x > T.float32(0), T.Select(T.isinf(x), x, r),
                    T.Select(x == T.float32(0), T.float32(-_INF), T.float32(_NAN)))


def ftanh(x):
    """tanh(x) in float32 (NaN through, +-1 at +-inf), vectorizable: the odd polynomial below
    |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) with x's sign above."""
    a = T.abs(x)
    z = x * x
    p = T.float32(_TANH[0])
    for c in _TANH[1:]:
        p = p * z + T.float32(c)
    big = T.float32(1) - T.float32(2) / (fexp(a * T.float32(2)) + T.float32(1))
    r = T.Select(a < T.float32(0.625), p * z * x + x, T.Select(x < T.float32(0), -big, big))
    return T.Select(T.isnan(x), x, r)


def tree(op, xs):
    """Reduce a list of expressions pairwise (a balanced tree: short dependency chains)."""
    xs = list(xs)
    while len(xs) > 1:
        xs = [op(xs[i], xs[i + 1]) if i + 1 < len(xs) else xs[i] for i in range(0, len(xs), 2)]
    return xs[0]


def lanes_max(buf, n):
    return tree(T.max, [buf[i] for i in range(n)])


def lanes_sum(buf, n):
    return tree(lambda a, b: a + b, [buf[i] for i in range(n)])
