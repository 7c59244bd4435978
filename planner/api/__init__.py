"""The planner REST API (FastAPI)."""
