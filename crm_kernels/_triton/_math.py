"""The formulas of csrc/include/crm_math.h (SPEC sections 1, 3, 4, 7), restated in Triton.

Keep the two files in step: tests/test_triton.py holds these kernels to the eager reference.
libdevice's log1p/expm1 do not run under TRITON_INTERPRET, so both are written with the classic
correction tricks, which keep full relative accuracy near zero (where plain log(1 + y) would
return 0 and turn L_W = -log(1 - S) of a nearly-sure trajectory into 87 instead of 23).
"""

import triton
import triton.language as tl

from .. import _numerics

# Module-level values read inside @triton.jit functions must be tl.constexpr: the compiler
# refuses plain Python globals (the interpreter does not, which is how a NameError reached GPUs).
# Clamp of log S(T) before L_W (SPEC 4): float32's smallest normal, for every dtype.
MAX_LOG_SURVIVAL = tl.constexpr(_numerics.MAX_LOG_SURVIVAL)
NEG_LN2 = tl.constexpr(-0.6931471805599453)


@triton.jit
def log1p(y):
    # Goldberg: log(u) * y / (u - 1) cancels the rounding of u = 1 + y.
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * (y / (u - 1.0)))


@triton.jit
def expm1(x):
    # Kahan: (u - 1) * x / log(u) with u = e^x; exact branches where u rounds to 1, to 0, or
    # overflows (inf * (x / inf) would be NaN there).
    u = tl.exp(x)
    um1 = u - 1.0
    kahan = tl.where(um1 == -1.0, -1.0, tl.where(u == float("inf"), u, um1 * (x / tl.log(u))))
    return tl.where(u == 1.0, x, kahan)


@triton.jit
def softplus_tail(x):
    """log(1 + e^-|x|), shared by softplus(x) and softplus(-x)."""
    return log1p(tl.exp(-tl.abs(x)))


@triton.jit
def softplus(x):
    """softplus(x) = -log(1 - sigmoid(x)) = -r_t."""
    return tl.maximum(x, 0.0) + softplus_tail(x)


@triton.jit
def softplus_neg(x, tail):
    """softplus(-x) = -log sigmoid(x), from softplus_tail(x)."""
    return tl.maximum(-x, 0.0) + tail


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def clamp_log_survival(log_survival):
    # NaN must survive: the comparison is false for NaN, which keeps it.
    return tl.where(log_survival > MAX_LOG_SURVIVAL, MAX_LOG_SURVIVAL, log_survival)


@triton.jit
def log1mexp(a):
    """log(1 - e^a) for a < 0, split at -ln 2. Each branch sees only its own range."""
    near_zero = a > NEG_LN2
    return tl.where(
        near_zero,
        tl.log(-expm1(tl.where(near_zero, a, NEG_LN2))),
        log1p(-tl.exp(tl.where(near_zero, NEG_LN2, a))),
    )


@triton.jit
def flawed_loss(log_survival):
    """L_W = -log(1 - S(T))."""
    return -log1mexp(clamp_log_survival(log_survival))


@triton.jit
def flawed_grad_scale(log_survival):
    """dL_W/dx_t = h_t * flawed_grad_scale(log S(T)) = -h_t * S / (1 - S)."""
    return -1.0 / expm1(-clamp_log_survival(log_survival))


@triton.jit
def trajectory_loss(softplus_sum, first_error_nll, correct, has_first_error, w_survive, w_wrong, w_first_error):
    """l_i of SPEC 3 from sum_t softplus(x_t) and L_z."""
    flawed = w_wrong * flawed_loss(-softplus_sum) + tl.where(has_first_error, w_first_error * first_error_nll, 0.0)
    return tl.where(correct, w_survive * softplus_sum, flawed)


@triton.jit
def trajectory_grad_coef(log_survival, correct, w_survive, w_wrong):
    """dl_i/dx_t = h_t * trajectory_grad_coef, away from the first wrong step (SPEC 3)."""
    return tl.where(correct, w_survive, w_wrong * flawed_grad_scale(log_survival))


@triton.jit
def first_error_term(x, softplus_x, tail, t, z):
    """Step t's term in L_z: softplus(x_t) before z, softplus(-x_z) at z, 0 after (or z = -1)."""
    return tl.where(t < z, softplus_x, tl.where(t == z, softplus_neg(x, tail), 0.0))


@triton.jit
def step_grad(x, hazard, coef, first_error_grad, t, z):
    """dl_i/dx_t from coef = upstream * trajectory_grad_coef and first_error_grad = upstream * w_z
    (0 where z is unknown)."""
    grad = tl.where(t < z, (coef + first_error_grad) * hazard, coef * hazard)
    return tl.where(t == z, coef * hazard - first_error_grad * sigmoid(-x), grad)


# ---- the baseline objectives (SPEC 7) ----------------------------------------------------------


@triton.jit
def bce_with_logits(x, y):
    """Binary cross-entropy with logits of a target y in [0, 1]: softplus(x) - y x."""
    return softplus(x) - y * x


@triton.jit
def bce_with_logits_grad(x, y):
    return sigmoid(x) - y


@triton.jit
def logaddexp(a, b):
    """log(e^a + e^b), -inf when both are; NaN in either gives NaN (the comparison sends it to
    `high`, or to `low` and through the exp)."""
    high = tl.where(a > b, a, b)
    low = tl.where(a > b, b, a)
    return tl.where(high == float("-inf"), high, high + log1p(tl.exp(low - high)))
