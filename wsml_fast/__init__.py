"""wsml: weakly supervised multi-label image classification on fastai and timm."""

__version__ = "0.1.0"
