"""The classifier (any timm backbone, its head and weights), mAP from labelled entries, and scoring a model on a
dataset (training's test pass, `eval` and `predict` share it)."""
