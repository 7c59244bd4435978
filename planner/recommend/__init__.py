"""`planner recommend`'s parts that are not the command line: quick flags, sweeps, comparisons, views, CSV."""
