"""A training run: its configuration and recipes, the run folder, the set-up, the Learner factory and its
callbacks, the checkpoint, the stages, what a resumed run must find unchanged, and `train` / `resume` themselves."""
