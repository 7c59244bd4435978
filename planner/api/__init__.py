"""The planner service: FastAPI over the store (`planner serve`)."""
