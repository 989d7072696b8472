"""The bucket's CORS rule lets a browser upload with exactly what an upload URL signs.

The rule `avatar-signer policies --allowed-origin` prints must allow exactly the signed
headers a page sets (the browser sets Content-Length itself) and expose ETag. Derived
from what the upload signer really signs: a new signed header that is not in
`UploadSigner.HEADERS` fails here, and one that is reaches the rule by itself. Real
preflights on SeaweedFS show what the rule does; tests/test_browser.py runs Chromium
against it.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import seaweed_s3
from avatarsigner_server.commands import policies
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.url_signers import BucketEndpoint, UploadSigner

ORIGIN = "http://127.0.0.1:8000"
FOREIGN = "http://127.0.0.1:8001"
AVATAR_JS = Path(__file__).resolve().parent.parent / "examples" / "web" / "static" / "avatar.js"


def _signed_upload_headers() -> set[str]:
    """The names of the headers an upload URL signs with every optional one in."""
    creds = StaticCredentials(Credentials("AKIDEXAMPLE0001", "secret-example-0001"))
    signed = UploadSigner(creds, BucketEndpoint("b-1", "eu-west-1"), "eu-west-1").sign(
        "uploads/alice/x",
        content_type="image/png",
        content_length=10,
        checksum_sha256="a" * 43 + "=",
        ttl_seconds=60,
        write_once=True,
    )
    return {name.lower() for name in signed.headers}


def _rule(origins: list[str] | None = None) -> dict[str, Any]:
    cors = policies.cors(origins or [ORIGIN])
    assert cors is not None
    (rule,) = cors["CORSRules"]
    return dict(rule)


def _forbidden_in_the_page() -> set[str]:
    """The request headers the reference page never sets (the Fetch standard's forbidden
    names, as examples/web/static/avatar.js lists them)."""
    listed = re.search(r"const FORBIDDEN = new Set\(\[(.*?)\]\)", AVATAR_JS.read_text(), re.S)
    assert listed is not None, "avatar.js no longer lists the forbidden header names"
    return set(re.findall(r'"([a-z0-9-]+)"', listed.group(1)))


def test_upload_signer_headers_name_every_header_an_upload_url_signs() -> None:
    assert _signed_upload_headers() == set(UploadSigner.HEADERS)


def test_allowed_headers_are_the_signed_headers_a_page_sets() -> None:
    sent_by_a_page = _signed_upload_headers() - set(UploadSigner.SET_BY_BROWSER)
    assert sorted(_rule()["AllowedHeaders"]) == sorted(sent_by_a_page)
    assert "content-length" not in _rule()["AllowedHeaders"]


def test_the_page_sets_what_the_rule_allows_and_leaves_the_rest_to_the_browser() -> None:
    forbidden = _forbidden_in_the_page()
    assert set(UploadSigner.SET_BY_BROWSER) <= forbidden
    assert not set(_rule()["AllowedHeaders"]) & forbidden


def test_etag_is_exposed_and_only_put_and_get_are_allowed() -> None:
    rule = _rule([ORIGIN, "https://app.example"])
    assert rule["ExposeHeaders"] == ["ETag"]  # Uppy 5 never finishes an upload without it
    assert sorted(rule["AllowedMethods"]) == ["GET", "PUT"]
    assert rule["AllowedOrigins"] == [ORIGIN, "https://app.example"]


# --------------------------------------------------------------- real preflights


@pytest.fixture(scope="module")
def bucket(
    local_s3: tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity],
) -> Iterator[seaweed_s3.LocalS3]:
    """The session's SeaweedFS with the printed rule on its bucket, for this module."""
    s3 = local_s3[0]
    rules = policies.cors([ORIGIN])
    assert rules is not None
    s3.put_cors(rules)
    try:
        yield s3
    finally:
        s3.put_cors(None)


def _preflight(
    s3: seaweed_s3.LocalS3, origin: str, method: str, headers: str
) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        f"{s3.endpoint_url}/{s3.bucket}/uploads/alice/x",
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), dict(response.headers)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), dict(error.headers)


def test_the_preflight_of_a_browser_upload_is_allowed(bucket: seaweed_s3.LocalS3) -> None:
    # What Chromium asks: the non-safelisted headers the page sets, lower case, sorted.
    asked = ",".join(sorted(UploadSigner.HEADERS_A_BROWSER_MAY_SET))
    status, headers = _preflight(bucket, ORIGIN, "PUT", asked)
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert set(UploadSigner.HEADERS_A_BROWSER_MAY_SET) <= allowed
    assert "PUT" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Expose-Headers"] == "ETag"


def test_a_foreign_origin_is_refused(bucket: seaweed_s3.LocalS3) -> None:
    status, headers = _preflight(bucket, FOREIGN, "PUT", "content-type")
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize(
    ("method", "asked"),
    [("PUT", "content-type,x-amz-meta-note"), ("DELETE", "")],
    ids=["header-outside-the-rule", "method-outside-the-rule"],
)
def test_a_header_or_method_outside_the_rule_is_not_allowed(
    bucket: seaweed_s3.LocalS3, method: str, asked: str
) -> None:
    """SeaweedFS answers 200 with only Allow-Origin: nothing allowed, so a browser refuses."""
    status, headers = _preflight(bucket, ORIGIN, method, asked)
    assert status == 200
    assert "Access-Control-Allow-Headers" not in headers
    assert "Access-Control-Allow-Methods" not in headers
