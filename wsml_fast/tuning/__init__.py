"""`wsml tune`: an Optuna study of training runs over schemes and their declared settings."""
