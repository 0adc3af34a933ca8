"""The harvester's exceptions, named for what the caller should do.

    HarvesterError                  root; every message is one line, with no credential in it
    ├── ConfigError                 fix the config or the command line (exit 2)
    ├── OutputError                 the output location cannot be written or read back
    ├── LockedError                 another run holds this harvest's lock (exit 4)
    ├── BudgetSpent                 a wait or retry would end past the budget's stop time: the
    │                               item is not sent, it stays pending for the next run
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
            ├── Unreachable         the host took no connection for several requests in a row,
            │                       each retried to its last attempt; circuit open
            └── HeldOff             a Retry-After longer than RetryPolicy.retry_after_max: every
                                    host of its rate budget would wait that long; stop, resume
"""

from __future__ import annotations


class HarvesterError(Exception):
    pass


class ConfigError(HarvesterError):
    pass


class OutputError(HarvesterError):
    pass


class LockedError(HarvesterError):
    pass


class BudgetSpent(HarvesterError):
    pass


class RequestError(HarvesterError):
    """`url` is sanitized; `attempts` is how many times it was sent (errors.ndjson says it)."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None,
                 reason: str = "", body: str = "", attempts: int = 1,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.url, self.status, self.body, self.attempts = url, status, body[:200], attempts
        self.reason = reason or (str(status) if status is not None else "error")
        self.retry_after = retry_after  # seconds a RetryableError asks to wait, if it says


class RetryableError(RequestError):
    pass


class GiveUp(RequestError):
    pass


class NotFound(RequestError):
    pass


class WindowExhausted(RequestError):
    pass


class BadResponse(RequestError):
    pass


class Abort(RequestError):
    pass


class AuthError(Abort):
    pass


class Blocked(Abort):
    pass


class Unreachable(Abort):
    pass


class HeldOff(Abort):
    pass
