"""wsml: weakly supervised multi-label image classification on fastai and timm.

The sub-packages follow the road of the data, each importing only from those above it in this list
(tests/test_layout.py keeps it so):

- `core`: errors, atomic files, seeds, the one way to speak, the process of a run and its switches
- `data`: label CSVs -> `LabelStore` -> the checked table of a dataset folder -> datasets and DataLoaders
- `model`: the classifier (timm backbone + head), mAP, scoring a model on a dataset
- `learning`: the Learner contract (run state, batch targets and item indices, the `WsmlCallback` base)
- `schemes`: the registry of training schemes, their declared settings, losses and families
- `training`: config and recipes, run folder, set-up, Learner factory, callbacks, checkpoint, `train` / `resume`
- `inference`: using a trained run folder (`eval`, `predict`)
- `tuning`: `wsml tune`, studies of training runs
- `prepare`: benchmark downloads and labelled CSVs turned into dataset folders
- `cli.py`: the `wsml` command line, where the process's decisions are made
"""

__version__ = "0.1.0"
