"""Several models sharing one server: what only deployments have (the file, the division of the
machine, every model's fleet at once, the load-factor estimate, the deployment as a subject to tune);
the study loop, the race and the readers are the single model's (issue 16, issue 31)."""
