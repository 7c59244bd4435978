"""Request and response bodies of the v1 API, one module per resource.

They sit below both the API (planner.api, which serves them) and the store (planner.crud, which writes them), so
the store never imports the API (pyproject's [tool.importlinter] contracts).
"""
