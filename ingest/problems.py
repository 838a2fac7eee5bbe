"""What can be wrong with a request, and the status each status mode answers for it."""

from __future__ import annotations

from enum import Enum
from typing import Literal

StatusMode = Literal["compat", "strict"]


class Problem(Enum):
    """A request-level refusal. Values: (strict status, compat status)."""

    UNAUTHORIZED = (401, 200)
    TOO_LARGE = (413, 400)
    UNSUPPORTED_MEDIA_TYPE = (415, 400)
    INVALID_BODY = (400, 400)
    BODY_TIMEOUT = (408, 408)  # not in the seed API: a client too slow to send its body

    def status(self, mode: StatusMode) -> int:
        strict, compat = self.value
        return strict if mode == "strict" else compat


class RequestRejected(Exception):
    def __init__(self, problem: Problem, reason: str) -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason


def too_large(reason: str) -> RequestRejected:
    return RequestRejected(Problem.TOO_LARGE, reason)


def invalid(reason: str) -> RequestRejected:
    return RequestRejected(Problem.INVALID_BODY, reason)


def unsupported(reason: str) -> RequestRejected:
    return RequestRejected(Problem.UNSUPPORTED_MEDIA_TYPE, reason)
