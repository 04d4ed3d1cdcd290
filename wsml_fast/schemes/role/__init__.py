"""ROLE (Cole et al.): its declaration here (plain data), its training code in `training`."""

from wsml_fast.schemes.cole import EXPECTED_POSITIVES
from wsml_fast.schemes.declaration import DenseState, Family, Mixing, Scheme

FAMILY = Family("role", "Cole et al., CVPR 2021 (ROLE)", "role", recipes_of="cole")  # Cole et al.'s settings

ENTRIES = (
    Scheme(
        "role",
        FAMILY.name,
        "jointly learns a label-estimate matrix (its own lr: 10 x `--lr`) with the classifier; its estimates "
        "are saved with the weights",
        build="role",
        settings=(EXPECTED_POSITIVES,),
        # estimate logits, their gradient and Adam's two moments: 4 float32 an entry
        dense_state=DenseState("a label estimate per training entry, with its gradient and Adam moments", 16),
        mixing=Mixing(
            "its label estimates are one per training image, each learned from that image's predictions, and a mix "
            "is no one image; use another scheme or leave out --mix",
            refused=True,
        ),
    ),
)
