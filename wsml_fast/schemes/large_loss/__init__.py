"""The large_loss family of schemes: its declarations here (plain data), its training code in `training`."""
