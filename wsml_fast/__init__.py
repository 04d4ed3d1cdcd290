"""wsml: weakly supervised multi-label image classification on fastai and timm.

The sub-packages follow the road of the data, each importing only from those above it in this list
(tests/test_layout.py keeps it so):

- `core`: errors, atomic files, folder locks, seeds, the one way to speak, the process of a run and its switches
- `data`: label CSVs -> `LabelStore` -> the checked table of a dataset folder -> datasets and DataLoaders
- `model`: the classifier (timm backbone + head), mAP, scoring a model on a dataset
- `learning`: the Learner contract (run state, batch targets and item indices, the `WsmlCallback` base)
- `schemes`: the registry of training schemes, their declared settings, losses and families
- `training`: config and recipes, run folder, set-up, Learner factory, callbacks, checkpoint, `train` / `resume`
- `inference`: using a trained run folder (`eval`, `predict`)
- `tuning`: `wsml tune`, studies of training runs
- `prepare`: benchmark downloads and labelled CSVs turned into dataset folders
- `cli.py`: the `wsml` command line, where the process's decisions are made

`wsml_fast.load_model(path)` opens a trained model (a run folder or its model.pth) for use from Python.
"""

from __future__ import annotations

from wsml_fast.core.version import WSML_VERSION

__version__ = WSML_VERSION
__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    """`load_model` is imported when first used, so that `import wsml_fast` (and `wsml --help`) stays light."""
    if name == "load_model":
        from wsml_fast.inference.trained import load_model

        return load_model
    raise AttributeError(f"module 'wsml_fast' has no attribute {name!r}")
