"""Several models sharing one server: the deployment file, the division of the machine, the
all-at-once bench, the load-factor search and the study (issue 16)."""
