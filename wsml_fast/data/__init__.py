"""From label CSVs to batches: label files read into a sparse `LabelStore`, the checked table of a dataset folder
and its splits, then datasets and DataLoaders that carry inputs and item indices."""
