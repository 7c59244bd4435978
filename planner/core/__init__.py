"""Settings and errors shared by every part of the planner."""
