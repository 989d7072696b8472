"""The call being served: its request id, the caller, the RPC and the caller's metadata.

The caller guard (access.guard) builds one `Call` per AvatarSigner call once the caller is
known and makes it current (a context variable, so it follows the call's coroutine); the
servicer and the audit log read it with `current()`. Outside the guard (a servicer used on
its own) `current()` returns an anonymous call with a fresh request id. It lives with
telemetry because it is, first of all, the identity of a call in every audit line and
metric.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from avatarsigner.contract import REQUEST_ID_METADATA

# A request id a caller sends in `x-request-id` is kept when it looks like one; else we make one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Call:
    """Who is calling which RPC. `metadata` holds the text metadata; never log it whole."""

    request_id: str
    rpc: str
    caller: str | None = None  # None until authenticated (and in audit lines of refusals)
    auth: str = "none"  # how the caller proved itself: token, certificate, open, none
    metadata: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The caller runs account deletion: DeleteAvatar needs no end-user token from it.
    account_deletion: bool = False


_current: ContextVar[Call | None] = ContextVar("avatarsigner_call", default=None)


def request_id(metadata: Mapping[str, str]) -> str:
    """The caller's x-request-id when it is a plain token, else a new random one."""
    given = metadata.get(REQUEST_ID_METADATA)
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return secrets.token_hex(16)


def enter(call: Call) -> Token[Call | None]:
    return _current.set(call)


def leave(token: Token[Call | None]) -> None:
    _current.reset(token)


def current(rpc: str) -> Call:
    """The current call, or an anonymous one for `rpc` when no interceptor set one."""
    call = _current.get()
    if call is None:
        return Call(request_id=secrets.token_hex(16), rpc=rpc, caller=ANONYMOUS, auth="open")
    return call
