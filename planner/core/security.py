"""Tokens: the admin and enrollment secrets from the settings, and per-host agent tokens.

An agent token is `<host_id>.<secret>`: the host id says which row to check, the secret is 32 random bytes
(url-safe base64). The store keeps only the secret's SHA-256, compared in constant time, so a leaked database
does not leak working tokens. SHA-256 without a salt or stretching is enough here: the secret is random, not
a password a person chose.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

TOKEN_BYTES = 32


def hash_secret(secret: str) -> str:
    """The stored form of a token's secret (hex SHA-256)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time equality of two secrets of any length (compares their digests)."""
    return hmac.compare_digest(hash_secret(given), hash_secret(expected))


def new_agent_token(host_id: str) -> tuple[str, str]:
    """A fresh token for a host and the hash to store: (token, token_hash)."""
    secret = secrets.token_urlsafe(TOKEN_BYTES)
    return f"{host_id}.{secret}", hash_secret(secret)


def split_agent_token(token: str) -> tuple[str, str] | None:
    """(host_id, secret) of a well-formed agent token, else None."""
    host_id, sep, secret = token.partition(".")
    if not sep or not secret:
        return None
    try:
        canonical = str(uuid.UUID(host_id))
    except ValueError:
        return None
    return (canonical, secret) if canonical == host_id else None


def agent_token_matches(secret: str, token_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), token_hash)
