"""The search: the space of configs, the strategy, the Optuna study, the final race."""
