"""`python -m agent`: the same program as the `agent` console script."""

from agent.cli import app

app()
