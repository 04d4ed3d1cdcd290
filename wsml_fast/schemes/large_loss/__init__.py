"""Kim et al.'s large-loss schemes (LL-R, LL-Ct, LL-Cp): their declarations here (plain data), their training
code in `training`."""

from wsml_fast.schemes.declaration import Family, Interval, Mixing, Range, Scheme, Setting

CORRECTIONS = "corrected_labels.csv"  # the run-folder file its schemes write (and checkpoint), one row an entry

FAMILY = Family("large-loss", "Kim et al., CVPR 2022 (Large Loss Matters)", "large_loss")

DELTA_REL = Setting(
    "delta_rel",
    float,
    0.2,
    "Delta in percent, typically 0.1 to 0.5",
    Interval(
        low=0,
        high=100,
        low_inclusive=False,
        high_inclusive=False,
        high_message="{option} is Delta in percent, below 100 (got {value}; typical 0.1 to 0.5)",
    ),
    Range(0.05, 1.0, log=True),
)

ENTRIES = (
    Scheme(
        "llr",
        FAMILY.name,
        "Large Loss Rejection: from epoch 2 on, the k largest AN losses among unobserved entries of each batch "
        "count 0; k = ceil(B C (t-1) Delta / 100)",
        build="rejection",
        settings=(DELTA_REL,),
    ),
    Scheme(
        "llct",
        FAMILY.name,
        "Large Loss Correction (temporary): those entries are trained as positives for this step",
        build="temporary_correction",
        settings=(DELTA_REL,),
    ),
    Scheme(
        "llcp",
        FAMILY.name,
        "Large Loss Correction (permanent): k = ceil(B C Delta / 100) entries a batch become observed positives "
        "for the rest of training; listed in `corrected_labels.csv` and checkpointed",
        build="permanent_correction",
        settings=(DELTA_REL,),
        mixing=Mixing(
            "a large loss selected in a mix is trained as a positive for that step (as LL-Ct) but not stored: a "
            "stored positive belongs to one image, and a mix cannot tell which of its images holds the class"
        ),
    ),
)
