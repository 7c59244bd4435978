"""Agent tokens: `<host_id>.<secret>`, stored as a SHA-256, compared in constant time."""

from __future__ import annotations

import uuid

from planner.core.security import agent_token_matches, hash_secret, new_agent_token, same_secret, split_agent_token


def test_a_token_round_trips_and_only_its_hash_is_kept() -> None:
    host_id = str(uuid.uuid4())
    token, stored = new_agent_token(host_id)
    parsed = split_agent_token(token)
    assert parsed is not None
    assert parsed[0] == host_id
    assert agent_token_matches(parsed[1], stored)
    assert parsed[1] not in stored
    assert len(stored) == 64
    assert not agent_token_matches(parsed[1] + "x", stored)
    assert new_agent_token(host_id)[0] != token


def test_malformed_tokens_are_not_agent_tokens() -> None:
    for bad in ("", "abc", "not-a-uuid.secret", f"{uuid.uuid4()}.", f"{str(uuid.uuid4()).upper()}.s"):
        assert split_agent_token(bad) is None


def test_same_secret() -> None:
    assert same_secret("a" * 40, "a" * 40)
    assert not same_secret("a" * 40, "a" * 39)
    assert hash_secret("x") == hash_secret("x")
