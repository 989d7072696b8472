"""Names of the ``avatarsigner.v1.AvatarSigner`` contract that both sides must agree on.

The server and this client import them from here, so a name is written once: the service's
full name and its RPCs (read from the generated descriptor, so they follow the .proto), and
the metadata keys a caller sends beside the request message.
"""

from __future__ import annotations

from .v1 import avatar_signer_pb2 as _pb

_SERVICE = _pb.DESCRIPTOR.services_by_name["AvatarSigner"]

SERVICE_NAME: str = _SERVICE.full_name
"""``avatarsigner.v1.AvatarSigner``."""

RPC_NAMES: frozenset[str] = frozenset(_SERVICE.methods_by_name)
"""The RPCs of the service, as the callers file's ``allow`` lists name them."""

METHOD_PREFIX = f"/{SERVICE_NAME}/"
"""The start of every AvatarSigner method path on the wire (``/<service>/<rpc>``)."""

AUTHORIZATION_METADATA = "authorization"
"""A calling service's credentials: ``Bearer <token>``."""

END_USER_TOKEN_METADATA = "x-end-user-token"  # noqa: S105 - a metadata key, not a secret
"""The end user's own token (a JWT) where uploads are bound to end users."""

REQUEST_ID_METADATA = "x-request-id"
"""A caller's id for the call, echoed in the server's audit lines when it is plain."""
