"""Cole et al.'s schemes (assume negative and its variants, EPR, the full- and known-label baselines): their
declarations here (plain data), their training code in `training`."""

from wsml_fast.schemes.declaration import Family, Interval, Mixing, Scheme, Setting

FAMILY = Family("cole", "Cole et al., CVPR 2021 (Multi-Label Learning from Single Positive Labels)", "cole")

EXPECTED_POSITIVES = Setting(
    "expected_positives",
    float,
    None,
    "expected positives per image (estimated from truth.csv when not given)",
    Interval(low=0, low_inclusive=False),
)

ENTRIES = (
    Scheme("an", FAMILY.name, "assume negative: unobserved entries are negatives", build="assume_negative"),
    Scheme(
        "an-ls",
        FAMILY.name,
        "`an` with label smoothing 0.1 (targets 0.9 / 0.1, as the Cole et al. code does)",
        build="assume_negative_smoothed",
    ),
    Scheme(
        "wan",
        FAMILY.name,
        "`an` with the negative term of unobserved entries weighted 1/(C-1)",
        build="weak_assume_negative",
    ),
    Scheme(
        "epr",
        FAMILY.name,
        "observed positives only, plus (batch mean of the expected count - k)^2 / C^2; k from "
        "`--expected-positives` (estimated from `truth.csv` when absent, and said so)",
        build="expected_positive",
        settings=(EXPECTED_POSITIVES,),
        mixing=Mixing(
            "its k stays the expected positives of one image, though a mix of N images holds up to N k positives"
        ),
    ),
    Scheme(
        "iu",
        FAMILY.name,
        "observed positives and observed negatives only (refused, with a reason, when there are no observed negatives)",
        build="known_labels",
        needs_observed_negatives=True,
    ),
    Scheme(
        "iun",
        FAMILY.name,
        "observed positives and every true negative from `truth.csv` (an oracle baseline)",
        build="known_labels",
        targets="observed-positives-true-negatives",
    ),
    Scheme("bce", FAMILY.name, "full labels from `truth.csv` (the upper bound)", build="known_labels", targets="truth"),
    Scheme("bce-ls", FAMILY.name, "`bce` with label smoothing 0.1", build="known_labels_smoothed", targets="truth"),
)
