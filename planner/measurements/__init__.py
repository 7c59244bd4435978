"""The measurements CSV contract and its import into the store."""
