"""Tests of the catalogs shipped as data (planner.catalog)."""
