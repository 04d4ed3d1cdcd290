"""The contract of a wsml Learner, below the schemes that rely on it: the run's state, each batch's targets and
item indices, the `WsmlCallback` base, and the state a checkpoint keeps."""
