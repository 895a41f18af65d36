"""The bench: one config measured: model, worker processes, launcher, load generator, statistics."""
