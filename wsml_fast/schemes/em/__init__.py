"""Zhou et al.'s entropy maximisation and asymmetric pseudo-labels: their declarations here (plain data), their
training code in `training`."""

from wsml_fast.schemes.declaration import DenseState, Family, Interval, Mixing, Range, Scheme, Setting

PSEUDO_LABELS = "pseudo_labels.csv"  # the run-folder file its schemes write (and checkpoint), one row an entry

FAMILY = Family("em", "Zhou et al., ECCV 2022 (Acknowledging the Unknown: EM and APL)", "em")

EM_ALPHA = Setting(
    "em_alpha",
    float,
    0.1,
    "weight of the entropy term",
    Interval(low=0, low_inclusive=False),
    Range(0.005, 0.5, log=True),
)
EM_BETA = Setting(
    "em_beta", float, 0.9, "weight of the pseudo-labelled entries", Interval(low=0), Range(0.01, 1.0, log=True)
)
APL_WARMUP = Setting(
    "apl_warmup",
    int,
    5,
    "pseudo-label after each epoch from this on",
    Interval(
        low=1,
        high="total_epochs",
        high_inclusive=False,
        high_message="{option} {value}: APL pseudo-labels after the epochs from the warm-up on, before the last; "
        "with {bound} epochs it would never run (use a smaller {option})",
    ),
)

ENTRIES = (
    Scheme(
        "em",
        FAMILY.name,
        "entropy maximisation: observed positives -log p, unobserved entries -alpha H(p) (`--em-alpha`)",
        build="entropy_maximization",
        settings=(EM_ALPHA,),
    ),
    Scheme(
        "em-apl",
        FAMILY.name,
        "`em` plus asymmetric pseudo-labels: after each epoch from `--apl-warmup` on, the least likely "
        "unobserved entries of each class get the soft negative label p, weighted `--em-beta`; listed in "
        "`pseudo_labels.csv` and checkpointed",
        build="entropy_maximization_apl",
        settings=(EM_ALPHA, EM_BETA, APL_WARMUP),
        # targets, pass probabilities and pseudo-label values (float32), flag (bool), epoch (int16), the pass's
        # selection (an int64 sort index and a bool per entry)
        dense_state=DenseState("the pass's scores and a pseudo-label flag, value and epoch per training entry", 24),
        mixing=Mixing(
            "a mix's unknown entry is pseudo-labelled where each of its images is a known or pseudo negative, "
            "with s = 1 - prod(1 - s_i), the chance that any is positive; the passes score unmixed images"
        ),
    ),
)
