"""TIR building blocks the generated kernels call (plain Python functions that return TIR
expressions, inlined when the generated TVMScript is parsed)."""
from tvm.script import tirx as T

NEG = -1.0e30          # the score of a masked pair
NEG_HALF = -5.0e29     # anything below is masked

_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
# minimax polynomial for exp on [-ln2/2, ln2/2] (Cephes expf coefficients)
_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def fexp(x):
    """exp(x) in float32 from TIR arithmetic, so LLVM vectorizes it (T.exp on a vector
    becomes scalar libm calls). Inputs below about -87.3 give exactly 0."""
    x = T.max(T.min(x, T.float32(88.37626)), T.float32(-88.37626))
    n = T.floor(x * T.float32(_LOG2E) + T.float32(0.5))
    r = x - n * T.float32(_LN2_HI) - n * T.float32(_LN2_LO)
    y = T.float32(_P[0])
    for c in _P[1:]:
        y = y * r + T.float32(c)
    y = y * r * r + r + T.float32(1.0)
    return y * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


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
