"""Chen et al.'s GR loss: its declaration here (plain data), its training code in `training`.

The defaults are yan4xi1/GRLoss config.py:93-102: (start, end) of each schedule, and the powers (q2, q3).
"""

from wsml_fast.schemes.declaration import Choice, Family, Interval, Pair, Scheme, Setting

FAMILY = Family("gr", "Chen et al., IJCAI 2024 (GR loss)", "gr")

POSITIVE = Interval(low=0, low_inclusive=False, low_message="--gr-sigma and --gr-q must be greater than 0")

GR_W = Setting("gr_w", Pair, (0.0, 2.0), "w's start and end", search=Choice(([0.0, 2.0], [0.0, 10.0])))
GR_B = Setting("gr_b", Pair, (-2.0, -2.0), "b's start and end", search=Choice(([-2.0, -2.0], [-2.0, -8.0])))
GR_MU = Setting("gr_mu", Pair, (0.5, 0.8), "mu's start and end")
GR_SIGMA = Setting("gr_sigma", Pair, (2.0, 0.5), "sigma's start and end", POSITIVE)
GR_Q = Setting("gr_q", Pair, (0.01, 1.0), "the powers q2, q3", POSITIVE)

ENTRIES = (
    Scheme(
        "gr",
        FAMILY.name,
        "generalized robust loss: unobserved entries get a soft pseudo-label k = sigmoid(w p + b) and a weight "
        "v = exp(-(p - mu)^2 / 2 sigma^2) on generalized cross-entropies; w, b, mu, sigma follow linear "
        "schedules over the epochs",
        build="generalized_robust",
        settings=(GR_W, GR_B, GR_MU, GR_SIGMA, GR_Q),
    ),
)
