"""Upload ids carry what an upload URL promised, and nothing else parses as one."""

from __future__ import annotations

import base64

import grpc
import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.signing import upload_ids
from avatarsigner_server.signing.upload_ids import UploadTicket
from google.rpc import error_details_pb2
from grpc_status import rpc_status

WITH = UploadTicket(minted_at_ms=1_900_000_000_000, content_length=5 * 1024 * 1024, nonce=b"n" * 16,
                    sha256=bytes(range(32)))  # fmt: skip
WITHOUT = UploadTicket(minted_at_ms=7, content_length=1, nonce=bytes(16))


@pytest.mark.parametrize("ticket", [WITH, WITHOUT], ids=["with-sha256", "without"])
def test_an_id_round_trips_and_is_url_safe(ticket: UploadTicket) -> None:
    upload_id = ticket.upload_id
    assert upload_ids.parse(upload_id) == ticket
    assert len(upload_id) in (38, 80)
    assert set(upload_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _flip(upload_id: str, index: int) -> str:
    swapped = "A" if upload_id[index] != "A" else "B"
    return upload_id[:index] + swapped + upload_id[index + 1 :]


NOT_IDS = [
    ("empty", ""),
    ("too-short", WITHOUT.upload_id[:-1]),
    ("too-long", WITHOUT.upload_id + "A"),
    ("padding", WITHOUT.upload_id[:-2] + "=="),
    ("slash", WITHOUT.upload_id[:-1] + "/"),
    ("dot-dot", "../" + WITHOUT.upload_id[3:]),
    ("other-version", base64.urlsafe_b64encode(b"\x02" + bytes(27)).decode().rstrip("=")),
    ("zero-length", base64.urlsafe_b64encode(b"\x01" + bytes(27)).decode().rstrip("=")),
    ("non-canonical-spelling", WITHOUT.upload_id[:-1] + chr(ord(WITHOUT.upload_id[-1]) + 1)),
]


@pytest.mark.parametrize("text", [c[1] for c in NOT_IDS], ids=[c[0] for c in NOT_IDS])
def test_what_the_service_could_not_have_minted_does_not_parse(text: str) -> None:
    assert upload_ids.parse(text) is None


def test_an_edited_claim_is_another_id() -> None:
    """Editing the length (or anything) names another staging key: never found in S3."""
    edited = upload_ids.parse(_flip(WITH.upload_id, 10))
    assert edited is None or edited != WITH


def test_confirm_with_a_malformed_id_names_the_field(stub: pb_grpc.AvatarSignerStub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.ConfirmUpload(pb.ConfirmUploadRequest(user_id="../bob", upload_id="x/../y"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(refused.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    assert [v.field for v in bad_request.field_violations] == ["user_id", "upload_id"]
