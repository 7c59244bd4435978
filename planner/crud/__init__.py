"""CRUD: keyword-only functions taking a Session first; the caller owns the transaction."""
