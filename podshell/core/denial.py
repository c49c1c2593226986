"""Why a request was refused, and what each front door says for it.

One exhaustive table: the API server answers with its HTTP status and
Kubernetes reason, and the native CLI reads the status back to know
whether trying again can help.  (The SSH door says the denial's own
message, whatever its kind.)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import assert_never


class DenialKind(Enum):
    FORBIDDEN = "forbidden"  # the policy says no (or the pod is not to be told of)
    NOT_FOUND = "not-found"  # no such pod
    INVALID = "invalid"  # a malformed name or an unknown container
    UNAVAILABLE = "unavailable"  # there, but not running now (or the server is shutting down)
    TOO_MANY = "too-many"  # a limit of the requester's (sessions per user)


@dataclass(frozen=True)
class Answer:
    """How a denial of one kind is said."""

    status: int  # HTTP
    reason: str  # the Kubernetes Status reason
    lasting: bool  # trying the same again soon cannot help


def answer(kind: DenialKind) -> Answer:
    match kind:
        case DenialKind.FORBIDDEN:
            return Answer(403, "Forbidden", lasting=True)
        case DenialKind.NOT_FOUND:
            return Answer(404, "NotFound", lasting=True)
        case DenialKind.INVALID:
            return Answer(400, "BadRequest", lasting=True)
        case DenialKind.UNAVAILABLE:
            return Answer(503, "ServiceUnavailable", lasting=False)
        case DenialKind.TOO_MANY:
            return Answer(429, "TooManyRequests", lasting=False)
        case _:
            assert_never(kind)


def kind_of_status(status: int) -> DenialKind | None:
    """The kind an HTTP answer says, for a client; None for any other status."""
    for kind in DenialKind:
        if answer(kind).status == status:
            return kind
    return None
