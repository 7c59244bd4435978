"""The planner REST client (docs/api.md), with retries on what a retry can fix.

Transport errors, 5xx, 408, 425 and 429 are retried with exponential backoff (planner.client, the base the
scheduler's job client shares); other 4xx are the caller's problem and raised at once (a bad token, a run the
planner refuses). Results go through the spool (agent/spool.py), so a planner that stays down past the retries
loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.spool import Spool
from planner.client import TRANSIENT_STATUS, ApiClient, ApiError

RETRY_STATUS = TRANSIENT_STATUS


class PlannerError(ApiError):
    """The planner answered with an error a retry will not fix (4xx), or kept failing past the retries."""


class PlannerClient(ApiClient):
    """Calls the planner with this host's token. `transport` lets tests plug in an httpx MockTransport."""

    error = PlannerError

    # -- agent routes (docs/api.md) ---------------------------------------------------------------------------
    def register(self, body: dict[str, Any], *, enrollment_token: str) -> dict[str, Any]:
        data: dict[str, Any] = self.request("POST", "/v1/hosts", json=body, token=enrollment_token).json()
        return data

    def heartbeat(self, host_id: str, body: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = self.request("POST", f"/v1/hosts/{host_id}/heartbeat", json=body).json()
        return data

    def queued_requests(self, host_id: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.request(
            "GET", f"/v1/hosts/{host_id}/requests", params={"state": "queued"}
        ).json()
        return data

    def claim(self, host_id: str, request_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = self.request("POST", f"/v1/hosts/{host_id}/requests/{request_id}/claim").json()
        except PlannerError as exc:
            if exc.status == 409:
                return None
            raise
        return data

    def complete(self, host_id: str, request_id: str, body: dict[str, Any]) -> None:
        self.request("POST", f"/v1/hosts/{host_id}/requests/{request_id}/complete", json=body)

    def submit_run(self, run: dict[str, Any]) -> bool:
        """Send one probe run; True when stored now, False when the planner already had it (200)."""
        response = self.request("POST", "/v1/probe-runs", json=run)
        return response.status_code == 201


class TokenRefused(PlannerError):
    """The planner refused this host's agent token (401): rotated, or the host deleted. Retrying cannot help;
    the spool is kept for the identity the host gets when it is enrolled again."""


REENROLL_HINT = (
    "the planner refused this host's token (401: rotated, or the host was deleted). Results stay spooled in {spool}. "
    "Fix: delete {token_file} and restart the agent with AGENT_ENROLLMENT_TOKEN set (or place the new token the "
    "operator issued with `POST /v1/hosts?rotate=true` in that file); the new identity then delivers the spool."
)


def flush(
    spool: Spool,
    client: PlannerClient,
    *,
    host_id: str | None = None,
    log: Callable[[str], None] | None = None,
    on_refused: Callable[[str, str], None] | None = None,
) -> tuple[int, int]:
    """Send every spooled run, oldest first; remove each once stored. Returns (sent, still pending).

    Stops at the first run that cannot be sent for a transient reason (planner down): the others would
    fail the same way. A run the planner refuses (4xx) is quarantined so it does not block the rest, and
    `on_refused(run_id, reason)` is told (the CLI exits non-zero, the daemon counts it and fails the request).
    A 401 (this host's token refused) raises TokenRefused with every run still spooled: nothing is retried
    or quarantined, and the host's next identity delivers them. The spool is this machine's, so each run is
    sent as the current identity (`host_id`), also a run spooled under an earlier one or before registration.
    """
    sent = 0
    for run_id in spool.pending():
        run = spool.load(run_id)
        if host_id is not None:
            run["host_id"] = host_id
        try:
            client.submit_run(run)
        except (ValueError, TypeError) as exc:  # cannot even be encoded: resending will not help
            spool.quarantine(run_id, f"not sendable: {exc}")
            if log:
                log(f"run {run_id} cannot be encoded, kept in {spool.dir / 'rejected'}: {exc}")
            if on_refused:
                on_refused(run_id, f"not sendable: {exc}")
            continue
        except PlannerError as exc:
            if exc.status == 401:
                raise TokenRefused(f"{exc}; {len(spool)} run(s) stay spooled", status=401) from exc
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403, *RETRY_STATUS):
                spool.quarantine(run_id, str(exc))
                if log:
                    log(f"run {run_id} refused by the planner, kept in {spool.dir / 'rejected'}: {exc}")
                if on_refused:
                    on_refused(run_id, str(exc))
                continue
            if log:
                log(f"planner unavailable, {len(spool)} run(s) stay spooled: {exc}")
            break
        spool.remove(run_id)
        sent += 1
    return sent, len(spool)
