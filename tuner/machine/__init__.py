"""The machine: CPU lists, the topology model and its sysfs reader, placement plans, NUMA calls."""
