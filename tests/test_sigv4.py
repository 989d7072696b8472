"""The SigV4 presigner against botocore, AWS's published examples, and its own small parts.

`sigv4.presign` promises URLs byte-identical to botocore's `S3SigV4QueryAuth` for the same
inputs. The differential test below checks that promise over thousands of seeded random
cases (keys full of characters that need encoding, both endpoint styles, default and
non-default ports, IPv6, header whitespace, session tokens, operation query parameters,
timestamps on day and year boundaries). The known-answer tests pin the values AWS publishes,
so the two implementations cannot agree on something wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import random
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from unittest import mock
from urllib.parse import urlencode, urlsplit

import pytest
from avatarsigner_server.signing import sigv4
from botocore.auth import S3SigV4QueryAuth, SigV4Auth, _host_from_url
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode as botocore_percent_encode

SEED = 20130524
RANDOM_CASES = 3000

# --------------------------------------------------------------------------- harness


@dataclass(frozen=True)
class Case:
    """One presigning input, described the way a caller of either implementation sees it."""

    method: str
    endpoint: str  # scheme://netloc, plus "/<bucket>" for path-style
    key: str  # the object key, unencoded
    access_key_id: str
    secret_access_key: str
    session_token: str | None
    region: str
    signed_at: datetime  # aware, UTC
    expires_in: int
    headers: tuple[tuple[str, str], ...] = ()  # as the client sends them (any name case)
    query: tuple[tuple[str, str], ...] = ()  # operation parameters, unencoded, unique names

    def path(self) -> str:
        return urlsplit(self.endpoint).path + "/" + sigv4.encode_key_path(self.key)


def ours(case: Case) -> str:
    parts = urlsplit(case.endpoint)
    return sigv4.presign(
        method=case.method,
        origin=f"{parts.scheme}://{parts.netloc}",
        host=sigv4.host_header(parts.scheme, parts.hostname or "", parts.port),
        path=case.path(),
        access_key_id=case.access_key_id,
        secret_access_key=case.secret_access_key,
        session_token=case.session_token,
        region=case.region,
        signed_at=case.signed_at,
        expires_in=case.expires_in,
        headers={name.lower(): value for name, value in case.headers},
        query=case.query,
    )


def botocores(case: Case) -> str:
    """botocore's S3SigV4QueryAuth with its clock pinned to case.signed_at.

    Operation parameters travel in the URL's query string (as botocore receives them from
    the S3 serializer); botocore parses them and puts them before its auth parameters.
    """
    url = urlsplit(case.endpoint)._replace(path=case.path()).geturl()
    if case.query:
        url += "?" + urlencode(case.query)
    request = AWSRequest(method=case.method, url=url, headers=dict(case.headers))
    credentials = Credentials(case.access_key_id, case.secret_access_key, case.session_token)
    auth = S3SigV4QueryAuth(credentials, "s3", case.region, expires=case.expires_in)
    naive_utc = case.signed_at.replace(tzinfo=None)  # botocore's clock returns naive UTC
    with mock.patch("botocore.auth.get_current_datetime", return_value=naive_utc):
        auth.add_auth(request)
    return request.url


def mismatch_report(label: str, case: Case, mine: str, theirs: str) -> str:
    """Only the parts of the two URLs that differ, plus the case to reproduce them."""
    lines = [f"{label}: {case!r}"]
    my_base, _, my_query = mine.partition("?")
    their_base, _, their_query = theirs.partition("?")
    if my_base != their_base:
        lines += [f"    path  ours: {my_base}", f"    path  boto: {their_base}"]
    differing = [
        (index, mine_part, their_part)
        for index, (mine_part, their_part) in enumerate(
            itertools.zip_longest(my_query.split("&"), their_query.split("&"), fillvalue="-")
        )
        if mine_part != their_part
    ]
    for index, mine_part, their_part in differing:
        lines += [f"    q[{index}]  ours: {mine_part}", f"    q[{index}]  boto: {their_part}"]
    if my_base == their_base and [d[1] for d in differing] == [mine.rsplit("&", 1)[1]]:
        lines.append("    (only the signature differs: canonical headers, path or signing key)")
    return "\n".join(lines)


def assert_same_as_botocore(label: str, case: Case) -> None:
    mine, theirs = ours(case), botocores(case)
    if mine != theirs:
        pytest.fail(mismatch_report(label, case, mine, theirs), pytrace=False)


# --------------------------------------------------------------------------- random cases

REGIONS = (
    "us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-2", "ap-south-1",
    "ap-southeast-4", "sa-east-1", "il-central-1", "cn-north-1", "us-gov-west-1",
)  # fmt: skip
BUCKETS = ("avatars", "profile-images-prod", "my.dotted.bucket", "b1")
KEY_ALPHABETS = (
    string.ascii_letters + string.digits,
    " +%~/=&?#!$'()*,;:@[]\"<>\\^`{|}-_.",  # reserved and unsafe ASCII, '/' included
    "".join(map(chr, range(1, 32))) + "\x7f",  # control characters
    # BMP letters, no-break space, zero-width space, BOM, a combining accent
    "éßüøñ日本語中文한국어עברيةΩЖ\u00a0\u200b\ufeff\u0301",
    "😀𝄞🏳️‍🌈𠜎",  # astral plane (4-byte UTF-8), ZWJ sequence
)
B64 = string.ascii_letters + string.digits + "+/"
CONTENT_TYPES = (
    "image/png", "image/jpeg", "image/webp", "text/plain; charset=utf-8",
    "multipart/form-data; boundary=----x y", "application/octet-stream", "",
)  # fmt: skip
QUERY_VALUES = (
    "private, max-age=60",
    'attachment; filename="a b+c.png"',
    "inline; filename*=UTF-8''%E2%82%AC%20rates.png",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "image/png",
    "3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo",
    "ключ=значение&x?y#z ~",
    "",
)


def random_key(rng: random.Random) -> str:
    if rng.random() < 0.15:  # the shape the service really signs
        return f"profiles/{rng.choice(['u1', 'User_42', 'a.b-c'])}/avatar"
    if rng.random() < 0.05:  # segments a path normalizer would rewrite; S3 must not
        return rng.choice(["a/../b", "./x", "a//b", "/leading", "trailing/", "..", "a/./b"])
    alphabets = rng.sample(KEY_ALPHABETS, rng.randint(1, len(KEY_ALPHABETS)))
    return "".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(1, 40)))


def random_endpoint(rng: random.Random, region: str) -> str:
    bucket = rng.choice(BUCKETS)
    return rng.choice(
        (
            f"https://{bucket}.s3.{region}.amazonaws.com",
            f"https://{bucket}.s3.{region}.amazonaws.com:443",  # default port, written out
            f"http://127.0.0.1:{rng.randint(1024, 65535)}/{bucket}",
            f"https://minio.example:9000/{bucket}",
            f"https://MinIO.Example:9000/{bucket}",  # Host is lowercased, URL is not
            f"https://minio.example:443/{bucket}",
            f"http://minio.example:80/{bucket}",
            f"http://minio.example:443/{bucket}",  # not the default port for http
            f"https://minio.example:80/{bucket}",  # not the default port for https
            f"http://minio.example/{bucket}",
            f"http://[::1]:{rng.randint(1024, 65535)}/{bucket}",
            f"https://[2001:db8::1]:443/{bucket}",
            f"https://[2001:DB8::a]/{bucket}",
        )
    )


def random_moment(rng: random.Random) -> datetime:
    day = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(100 * 365))
    kind = rng.randrange(4)
    if kind == 0:  # a second either side of midnight
        return day + timedelta(seconds=rng.choice((-1, 0, 1)))
    if kind == 1:  # a second either side of a new year
        new_year = datetime(rng.randint(2000, 2099), 1, 1, tzinfo=UTC)
        return new_year + timedelta(seconds=rng.choice((-1, 0, 1)))
    if kind == 2:  # leap day, microseconds that both sides must drop
        return datetime(2024, 2, 29, 23, 59, 59, rng.randrange(1_000_000), tzinfo=UTC)
    return day + timedelta(seconds=rng.randrange(86400))


def with_whitespace(rng: random.Random, value: str) -> str:
    """Leading, trailing and repeated inner whitespace that SigV4 folds away."""
    pad = ("", "", " ", "  ", "\t", " \t ")
    inner = value.replace(" ", rng.choice((" ", "  ", "\t", " \t  ")))
    return rng.choice(pad) + inner + rng.choice(pad)


def random_headers(rng: random.Random) -> tuple[tuple[str, str], ...]:
    candidates = {
        "content-type": rng.choice(CONTENT_TYPES),
        "content-length": str(rng.choice((0, 1, rng.randint(2, 5 * 1024 * 1024)))),
        "x-amz-checksum-sha256": base64.b64encode(rng.randbytes(32)).decode(),
        "x-amz-meta-owner": "user 42  (avatar)",
    }
    chosen = rng.sample(sorted(candidates), rng.randint(0, len(candidates)))
    headers = []
    for name in chosen:
        value = candidates[name]
        spelled = rng.choice((name, name.title(), name.upper()))
        headers.append((spelled, with_whitespace(rng, value) if rng.random() < 0.5 else value))
    return tuple(headers)


def random_query(rng: random.Random) -> tuple[tuple[str, str], ...]:
    if rng.random() < 0.6:
        return ()
    names = (
        "response-cache-control", "response-content-disposition", "response-content-type",
        "response-expires", "versionId", "x-id",
    )  # fmt: skip
    chosen = rng.sample(names, rng.randint(1, 3))
    return tuple((name, rng.choice(QUERY_VALUES)) for name in chosen)


def random_case(rng: random.Random) -> Case:
    region = rng.choice(REGIONS)
    token = None
    if rng.random() < 0.5:
        token = "".join(rng.choice(B64) for _ in range(rng.randint(16, 200))) + rng.choice(
            ("", "=", "==")
        )
    return Case(
        method=rng.choice(("GET", "PUT")),
        endpoint=random_endpoint(rng, region),
        key=random_key(rng),
        access_key_id=rng.choice(("AKIA", "ASIA"))
        + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
        secret_access_key="".join(rng.choice(B64) for _ in range(40)),
        session_token=token,
        region=region,
        signed_at=random_moment(rng),
        expires_in=rng.choice((1, 60, 600, 604800, rng.randint(1, 604800))),
        headers=random_headers(rng),
        query=random_query(rng),
    )


def test_presign_matches_botocore_byte_for_byte_on_random_cases() -> None:
    rng = random.Random(SEED)
    failures = []
    for index in range(RANDOM_CASES):
        case = random_case(rng)
        mine, theirs = ours(case), botocores(case)
        if mine != theirs:
            failures.append(mismatch_report(f"case {index} (seed {SEED})", case, mine, theirs))
    if failures:
        summary = f"{len(failures)} of {RANDOM_CASES} random cases differ; the first ones:"
        pytest.fail("\n".join([summary, *failures[:3]]), pytrace=False)


# --------------------------------------------------------------------------- named edge cases

BASE = Case(
    method="GET",
    endpoint="https://avatars.s3.eu-west-1.amazonaws.com",
    key="profiles/u1/avatar",
    access_key_id="AKIDEXAMPLE",
    secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    session_token=None,
    region="eu-west-1",
    signed_at=datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC),
    expires_in=300,
)


def _with(**changes: object) -> Case:
    return Case(**{**BASE.__dict__, **changes})


EDGE_CASES = {
    "virtual-hosted regional endpoint": BASE,
    "https :443 is dropped from Host, kept in the URL": _with(
        endpoint="https://minio.example:443/avatars"
    ),
    "http :80 is dropped from Host": _with(endpoint="http://minio.example:80/avatars"),
    "http :443 is not a default port": _with(endpoint="http://minio.example:443/avatars"),
    "path-style loopback with port": _with(endpoint="http://127.0.0.1:8333/avatars"),
    "IPv6 literal with port": _with(endpoint="http://[::1]:8333/avatars"),
    "IPv6 literal on the default port": _with(endpoint="https://[2001:db8::1]:443/avatars"),
    "uppercase hostname": _with(endpoint="https://S3.Example.COM:9000/avatars"),
    "every printable ASCII character in the key": _with(key=string.printable),
    "key of only a slash": _with(key="/"),
    "dot segments are not normalized": _with(key="a/./b/../c//d"),
    "session token with / + =": _with(session_token="IQoJb3JpZ2luX2Vj/+tok+/en=="),
    "empty session token is still sent": _with(session_token=""),
    "one second before midnight": _with(signed_at=datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
    "exactly new year": _with(signed_at=datetime(2026, 1, 1, tzinfo=UTC)),
    "minimum ttl": _with(expires_in=1),
    "maximum ttl (7 days)": _with(expires_in=604800),
    "PUT bound to type, length and checksum": _with(
        method="PUT",
        headers=(
            ("Content-Type", "image/png"),
            ("Content-Length", "5242880"),
            ("x-amz-checksum-sha256", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
        ),
    ),
    "header values with inner and outer whitespace": _with(
        method="PUT",
        headers=(("content-type", " \ttext/plain;   charset=utf-8\t "), ("content-length", " 7 ")),
    ),
    "operation parameters precede the auth parameters": _with(
        query=(
            ("response-cache-control", "private, max-age=60"),
            ("response-content-disposition", 'attachment; filename="ünï cödé+%.png"'),
        )
    ),
}


@pytest.mark.parametrize("case", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_presign_matches_botocore_on_edge_case(case: Case) -> None:
    assert_same_as_botocore("edge case", case)


# --------------------------------------------------------------------------- AWS published examples

# "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", Amazon S3 API
# Reference, https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html,
# example "GET Object": inputs, canonical query, canonical request, string to sign, signature.
S3_DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # '/' before bPx: the S3 pages' key
S3_DOC_CANONICAL_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z"
    "&X-Amz-Expires=86400"
    "&X-Amz-SignedHeaders=host"
)
S3_DOC_CANONICAL_REQUEST = (
    "GET\n/test.txt\n"
    f"{S3_DOC_CANONICAL_QUERY}\n"
    "host:examplebucket.s3.amazonaws.com\n\nhost\nUNSIGNED-PAYLOAD"
)
S3_DOC_STRING_TO_SIGN = (
    "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
    "3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04"
)
S3_DOC_SIGNATURE = "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
S3_DOC_CASE = Case(
    method="GET",
    endpoint="https://examplebucket.s3.amazonaws.com",
    key="test.txt",
    access_key_id="AKIAIOSFODNN7EXAMPLE",
    secret_access_key=S3_DOC_SECRET,
    session_token=None,
    region="us-east-1",
    signed_at=datetime(2013, 5, 24, tzinfo=UTC),
    expires_in=86400,
)


def test_presign_reproduces_the_aws_documented_presigned_get_url() -> None:
    url = ours(S3_DOC_CASE)
    assert url == (
        "https://examplebucket.s3.amazonaws.com/test.txt"
        f"?{S3_DOC_CANONICAL_QUERY}&X-Amz-Signature={S3_DOC_SIGNATURE}"
    )
    assert url == botocores(S3_DOC_CASE)


def test_building_blocks_reproduce_the_documented_canonical_request_and_string_to_sign() -> None:
    block, signed = sigv4.canonical_headers({"host": "examplebucket.s3.amazonaws.com"})
    canonical = sigv4.canonical_request("GET", "/test.txt", S3_DOC_CANONICAL_QUERY, block, signed)
    assert canonical == S3_DOC_CANONICAL_REQUEST
    scope = "20130524/us-east-1/s3/aws4_request"
    to_sign = sigv4.string_to_sign("20130524T000000Z", scope, canonical)
    assert to_sign == S3_DOC_STRING_TO_SIGN
    key = sigv4.signing_key(S3_DOC_SECRET, "20130524", "us-east-1", "s3")
    assert sigv4.signature(key, to_sign) == S3_DOC_SIGNATURE


# "Examples of how to derive a signing key for Signature Version 4" (AWS General Reference,
# now the IAM User Guide's SigV4 pages): secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
# 20120215, us-east-1, iam. Every intermediate key below was also recomputed with hmac and
# hashlib, and the final one is checked against botocore in the next test.
DERIVATION_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
DERIVATION_STEPS = (
    ("20120215", "969fbb94feb542b71ede6f87fe4d5fa29c789342b0f407474670f0c2489e0a0d"),  # kDate
    ("us-east-1", "69daa0209cd9c5ff5c8ced464a696fd4252e981430b10e3d3fd8e2f197d7a70c"),  # kRegion
    ("iam", "f72cfd46f26bc4643f06a11eabb6c0ba18780c19a8da0c31ace671265e3c87fa"),  # kService
    ("aws4_request", "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"),
)


def test_signing_key_matches_the_aws_documented_derivation() -> None:
    key = ("AWS4" + DERIVATION_SECRET).encode()
    for part, expected in DERIVATION_STEPS:
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        assert key.hex() == expected, part
    derived = sigv4.signing_key(DERIVATION_SECRET, "20120215", "us-east-1", "iam")
    assert derived.hex() == DERIVATION_STEPS[-1][1]


def test_signing_key_signs_exactly_like_botocores_inline_derivation() -> None:
    """botocore derives the key inside SigV4Auth.signature; equal signatures prove equal keys."""
    auth = SigV4Auth(Credentials("AKIDEXAMPLE", DERIVATION_SECRET), "iam", "us-east-1")
    request = AWSRequest(method="GET", url="https://iam.amazonaws.com/")
    request.context["timestamp"] = "20120215T000000Z"
    message = "any string to sign"
    key = sigv4.signing_key(DERIVATION_SECRET, "20120215", "us-east-1", "iam")
    assert sigv4.signature(key, message) == auth.signature(message, request)


# --------------------------------------------------------------------------- small pure functions

UNRESERVED = string.ascii_letters + string.digits + "-_.~"


def test_percent_encode_leaves_unreserved_characters_alone() -> None:
    assert sigv4.percent_encode(UNRESERVED) == UNRESERVED


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (" ", "%20"),  # never '+'
        ("+", "%2B"),
        ("/", "%2F"),
        ("*", "%2A"),
        ("%", "%25"),
        ("=&?#", "%3D%26%3F%23"),
        ("é", "%C3%A9"),  # UTF-8, uppercase hex
        ("😀", "%F0%9F%98%80"),
        ("private, max-age=60", "private%2C%20max-age%3D60"),
    ],
)
def test_percent_encode_encodes_reserved_characters_as_uppercase_utf8(
    raw: str, encoded: str
) -> None:
    assert sigv4.percent_encode(raw) == encoded


def test_percent_encode_agrees_with_botocore_on_every_bmp_character() -> None:
    text = "".join(chr(c) for c in range(1, 0x10000) if not 0xD800 <= c <= 0xDFFF)
    assert sigv4.percent_encode(text) == botocore_percent_encode(text)


def test_encode_key_path_keeps_slashes_and_matches_botocores_greedy_key_label() -> None:
    key = "profiles/a b+c/%7E~/日本/avatar?.png#x"
    expected = "profiles/a%20b%2Bc/%257E~/%E6%97%A5%E6%9C%AC/avatar%3F.png%23x"
    assert sigv4.encode_key_path(key) == expected
    # botocore's S3 serializer renders the {Key+} label with percent_encode(key, safe="/~").
    assert sigv4.encode_key_path(key) == botocore_percent_encode(key, safe="/~")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h.example/", "h.example"),
        ("https://h.example:443/", "h.example"),
        ("http://h.example:80/", "h.example"),
        ("http://h.example:443/", "h.example:443"),
        ("https://h.example:80/", "h.example:80"),
        ("https://H.Example:9000/", "h.example:9000"),
        ("http://127.0.0.1:8333/", "127.0.0.1:8333"),
        ("http://[::1]:8333/", "[::1]:8333"),
        ("https://[2001:DB8::1]:443/", "[2001:db8::1]"),
        ("https://[2001:db8::1]/", "[2001:db8::1]"),
    ],
)
def test_host_header_drops_default_ports_and_brackets_ipv6_like_botocore(
    url: str, expected: str
) -> None:
    parts = urlsplit(url)
    assert sigv4.host_header(parts.scheme, parts.hostname or "", parts.port) == expected
    assert _host_from_url(url) == expected


def test_host_header_lowercases_a_hostname_given_in_mixed_case() -> None:
    assert sigv4.host_header("https", "MinIO.Example", 9000) == "minio.example:9000"
    assert sigv4.host_header("http", "2001:DB8::A", 80) == "[2001:db8::a]"


def test_canonical_headers_sorts_names_and_folds_whitespace() -> None:
    block, signed = sigv4.canonical_headers(
        {
            "x-amz-meta-note": "a   b\t\t c",
            "host": "h.example",
            "content-type": " \timage/png \t",
            "content-length": "   ",
        }
    )
    assert block == (
        "content-length:\ncontent-type:image/png\nhost:h.example\nx-amz-meta-note:a b c\n"
    )
    assert signed == "content-length;content-type;host;x-amz-meta-note"


def test_amz_date_is_the_basic_iso8601_form_without_microseconds() -> None:
    moment = datetime(2013, 5, 24, 0, 0, 0, 999_999, tzinfo=UTC)
    assert sigv4.amz_date(moment) == "20130524T000000Z"


def test_cached_signing_key_equals_an_uncached_derivation() -> None:
    sigv4.signing_key.cache_clear()
    args = (DERIVATION_SECRET, "20260101", "eu-west-1", "s3")
    first = sigv4.signing_key(*args)
    second = sigv4.signing_key(*args)
    assert second is first  # served from the cache
    assert sigv4.signing_key.cache_info().hits == 1
    assert first == sigv4.signing_key.__wrapped__(*args)  # the undecorated derivation
    key = ("AWS4" + args[0]).encode()
    for part in (*args[1:], "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    assert first == key


def test_signing_key_cache_separates_secret_date_region_and_service() -> None:
    args = (DERIVATION_SECRET, "20260101", "eu-west-1", "s3")
    keys = {sigv4.signing_key(*args)}
    for index, other in enumerate(("other-secret", "20260102", "eu-west-2", "iam")):
        changed = list(args)
        changed[index] = other
        keys.add(sigv4.signing_key(*changed))
    assert len(keys) == 5
