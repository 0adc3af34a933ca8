"""The harvester's exceptions, named for what the caller should do.

    HarvesterError                  root; every message is one line, with no credential in it
    ├── ConfigError                 fix the config or the command line (exit 2)
    ├── OutputError                 the output location cannot be written or read back
    ├── LockedError                 another run holds this harvest's lock (exit 4)
    └── RequestError                one HTTP exchange went wrong; carries status, sanitized url,
        │                           reason and attempts (too-large, bad-redirect: not retried)
        ├── RetryableError          429, 5xx, connection reset, timeout, truncated body: retry
        ├── GiveUp                  still failing after the retry budget: skip, record in errors
        ├── NotFound                404: the entity is gone or private; skip (or tombstone)
        ├── WindowExhausted         400 "Max page reached" / 422 past the paging window: split
        ├── BadResponse             2xx whose body is not what the endpoint promises
        │                           (bad-json: not JSON, or JSON that cannot be kept): skip
        └── Abort                   stop talking to this host or source
            ├── AuthError           401, or 403 with a JSON body: credentials missing or refused
            ├── Blocked             403 with an HTML body: the host is blocking us; circuit open
            └── Unreachable         the host took no connection for several requests in a row,
                                    each retried to its last attempt; circuit open
"""

from __future__ import annotations


class HarvesterError(Exception):
    """Root of every error the harvester raises on purpose."""


class ConfigError(HarvesterError):
    """The configuration or the command line is wrong; the message names file and key."""


class OutputError(HarvesterError):
    """The output directory (or object store) cannot be written or is not what we expect."""


class LockedError(HarvesterError):
    """Another run of the same harvest name holds the lock."""


class RequestError(HarvesterError):
    """One HTTP exchange failed. `url` is sanitized (no query credentials); `attempts` is how
    many times it was sent before the client stopped (errors.ndjson reports it)."""

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        status: int | None = None,
        reason: str = "",
        body: str = "",
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.reason = reason or (str(status) if status is not None else "error")
        self.body = body[:200]
        self.attempts = attempts


class RetryableError(RequestError):
    """A transient failure: the policy may try again (after `retry_after` seconds if given)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class GiveUp(RequestError):
    """A request kept failing until the retry budget ran out."""


class NotFound(RequestError):
    """404: the entity does not exist or is not visible with these credentials."""


class WindowExhausted(RequestError):
    """The server refused to page further into this query: narrow the query and go on."""


class BadResponse(RequestError):
    """A success status with a body that is not what the endpoint documents."""


class Abort(RequestError):
    """Nothing more should be sent for this source or host."""


class AuthError(Abort):
    """401, or 403 with a JSON body: credentials are missing, wrong or lack rights."""


class Blocked(Abort):
    """403 with an HTML body from a public endpoint: the client is being blocked."""


class Unreachable(Abort):
    """Connections to the host kept failing (refused, unresolvable, timed out) through every
    retry of several requests in a row: the host is down, or not reachable from here."""
