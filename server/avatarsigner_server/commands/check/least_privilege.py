"""`avatar-signer check`: the least-privilege audit, against the real bucket.

With the service's own settings and credentials, it asks S3 itself what each identity can
do, using plain HTTP requests with presigned URLs made by the service's own signers
(`UploadSigner`/`DownloadSigner`, each also fed the *other* identity's credentials) and
`sigv4.presign` for DELETE and LIST:

    the uploader can PUT a canary object (a reserved key no user id can produce),
    the uploader cannot GET it, the reader can, the reader cannot PUT (canary unchanged),
    an unsigned GET or LIST is refused (the bucket is not public),
    neither identity can DELETE or LIST,
    both URLs are SigV4 for AWS_REGION on the regional virtual-hosted endpoint,
    the bucket answers from AWS_REGION (no redirect).

Every row is PASS, FAIL or SKIP; a SKIP says why the check means nothing here (an
S3-compatible server at S3_ENDPOINT_URL is not AWS: it has no regional endpoint and ignores
the region) and never counts as a pass. The exit status is 1 when any row fails.

The canary stays in the bucket (by design neither identity may delete it); each run
overwrites it. Nothing printed contains a secret, a session token or a presigned URL.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

from ...credentials.watcher import build_watcher
from ...errors import CredentialsUnavailable
from ...settings import Settings
from ...settings.identities import describe
from ...signing import sigv4
from ...signing.clock import Clock, utc_now
from ...signing.key_pairs import CredentialSource
from ...signing.object_keys import ObjectKeys
from ...signing.url_signers import BucketEndpoint, DownloadSigner, UploadSigner
from .. import policies
from . import advice
from .report import FAIL, PASS, SKIP, Result
from .report import render as render_table
from .s3_http import Reply, send

HELP = """\
Audit the configured credentials against the configured bucket (settings from the
environment, as for `serve`), with real requests signed by the service's own signers:

  uploader can PUT a canary object (a reserved key no user id can produce)
  uploader cannot GET it; reader can; reader cannot PUT (and the canary is unchanged)
  an unsigned GET or LIST is refused (the bucket is not public)
  neither identity can DELETE or LIST
  URLs are SigV4 for AWS_REGION on the regional virtual-hosted endpoint
  the bucket answers from AWS_REGION (no redirect)
  with RATE_LIMIT_REDIS_URL set: the rate-limit store runs a check (server, version and
  address shown, never the password)

Prints a table of PASS / FAIL / SKIP rows; exits 1 when any row fails, 2 on a settings
error. SKIP marks a check that means nothing for this endpoint (an S3-compatible server at
S3_ENDPOINT_URL has no regional endpoint and ignores the region); it is never a pass.
"""

URL_TTL_SECONDS = 120
CANARY_TYPE = "application/octet-stream"
# S3's ways of saying "this bucket lives in another region".
_REGION_CODES = frozenset(
    {"PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed"}
)


class BucketProbe:
    """The checks in order; each appends rows to `results`."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.endpoint = BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url)
        self.on_aws = settings.endpoint_url is None
        self.canary = ObjectKeys(settings.key_prefix).canary_key()
        self.objects = policies.objects_arn(settings.bucket)
        self.results: list[Result] = []
        self.replies: list[Reply] = []
        self.urls: list[str] = []
        self.canary_body = f"avatar-signer check canary {uuid.uuid4()}\n".encode()

    def add(self, check: str, outcome: str, detail: str) -> None:
        self.results.append(Result(check, outcome, detail))

    def http(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        reply = send(method, url, body, headers)
        self.replies.append(reply)
        return reply

    # --- credentials --------------------------------------------------------------------

    def credentials(self) -> dict[str, CredentialSource | None]:
        watcher = build_watcher(self.settings, self.clock)
        settings = self.settings.identities()
        usable: dict[str, CredentialSource | None] = {}
        for identity, source in watcher.sources.items():
            source.refresh()
            try:
                creds = source.get(self.clock() + timedelta(seconds=URL_TTL_SECONDS + 60))
            except CredentialsUnavailable as error:
                self.add(f"{identity} credentials", FAIL, error.message)
                usable[identity] = None
                continue
            detail = describe(settings[identity])
            if creds.access_key_id not in detail:
                detail += f", key id {creds.access_key_id}"
            if creds.expires_at is not None:
                detail += f", expires {creds.expires_at:%Y-%m-%d %H:%M:%SZ}"
            self.add(f"{identity} credentials", PASS, detail)
            usable[identity] = source
        return usable

    # --- helpers ----------------------------------------------------------------------------

    def put(self, source: CredentialSource, body: bytes) -> Reply:
        signer = UploadSigner(source, self.endpoint, self.settings.region, self.clock)
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        signed = signer.sign(
            self.canary,
            content_type=CANARY_TYPE,
            content_length=len(body),
            checksum_sha256=checksum,
            ttl_seconds=URL_TTL_SECONDS,
        )
        self.urls.append(signed.url)
        return self.http("PUT", signed.url, body, dict(signed.headers))

    def get(self, source: CredentialSource) -> Reply:
        signer = DownloadSigner(source, self.endpoint, self.settings.region, self.clock)
        signed = signer.sign(self.canary, ttl_seconds=URL_TTL_SECONDS)
        self.urls.append(signed.url)
        return self.http("GET", signed.url)

    def raw(
        self, method: str, source: CredentialSource, path: str, query: tuple[tuple[str, str], ...]
    ) -> Reply:
        """A presigned request for methods our signers never make (DELETE, LIST, HEAD)."""
        signed_at = self.clock().replace(microsecond=0)
        creds = source.get(signed_at + timedelta(seconds=URL_TTL_SECONDS))
        url = sigv4.presign(
            method=method,
            origin=self.endpoint.origin,
            host=self.endpoint.host,
            path=path,
            access_key_id=creds.access_key_id,
            secret_access_key=creds.secret_access_key,
            session_token=creds.session_token,
            region=self.settings.region,
            signed_at=signed_at,
            expires_in=URL_TTL_SECONDS,
            query=query,
        )
        return self.http(method, url)

    def list_query(self) -> tuple[tuple[str, str], ...]:
        prefix = self.canary.rsplit("/", 1)[0] + "/"
        return (("list-type", "2"), ("max-keys", "1"), ("prefix", prefix))

    # --- the checks -----------------------------------------------------------------------

    def uploader_can_put(self, uploader: CredentialSource) -> bool:
        reply = self.put(uploader, self.canary_body)
        if 200 <= reply.status < 300:
            self.add("uploader can PUT the canary", PASS, f"{reply} ({self.canary})")
            return True
        if reply.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
            why = advice.rejected_key_pair("uploader", reply)
        elif reply.refused:
            why = advice.uploader_cannot_upload(reply, self.objects)
        else:
            why = f"unexpected answer {reply}"
        self.add("uploader can PUT the canary", FAIL, why)
        return False

    def uploader_cannot_get(self, uploader: CredentialSource, stored: bool) -> bool:
        """Returns whether the uploader CAN read (the failure)."""
        reply = self.get(uploader)
        name = "uploader cannot GET"
        if reply.status == 200:
            self.add(name, FAIL, advice.uploader_can_read(self.objects))
            return True
        if reply.status == 404:
            self.add(name, FAIL, advice.UPLOADER_GET_AUTHORIZED)
            return True
        if reply.refused and stored:
            self.add(name, PASS, f"{reply}")
        elif reply.refused:
            self.add(name, SKIP, f"{reply}, but inconclusive: the canary could not be stored")
        else:
            self.add(name, FAIL, f"unexpected answer {reply}")
        return False

    def reader_can_get(self, reader: CredentialSource, stored: bool) -> bool:
        reply = self.get(reader)
        name = "reader can GET the canary"
        if reply.status == 200 and (not stored or reply.body == self.canary_body):
            self.add(name, PASS, f"{reply}, same bytes")
            return True
        if reply.status == 200:
            self.add(name, FAIL, "200, but not the canary's bytes")
            return True
        if reply.status == 404 and not stored:
            self.add(name, SKIP, "404: inconclusive, the canary could not be stored")
            return True
        if reply.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
            self.add(name, FAIL, advice.rejected_key_pair("reader", reply))
        elif reply.refused:
            self.add(name, FAIL, advice.reader_cannot_read(reply, self.objects))
        else:
            self.add(name, FAIL, f"unexpected answer {reply}")
        return False

    def reader_cannot_put(self, reader: CredentialSource, verify: CredentialSource | None) -> bool:
        """Returns whether the reader CAN write (the failure)."""
        reply = self.put(reader, b"written by the reader: must never be stored\n")
        name = "reader cannot PUT (canary unchanged)"
        if reply.allowed:
            self.add(name, FAIL, advice.reader_can_write(reply, self.objects))
            return True
        if not reply.refused:
            self.add(name, FAIL, f"unexpected answer {reply}")
            return False
        if verify is not None:
            after = self.get(verify)
            if after.status == 200 and after.body != self.canary_body:
                self.add(name, FAIL, f"PUT answered {reply}, yet the canary changed")
                return False
        self.add(name, PASS, f"{reply}")
        return False

    def not_public(self) -> None:
        name = "bucket is not publicly readable"
        obj = self.http("GET", self.endpoint.origin + self.endpoint.path(self.canary))
        listing = self.http(
            "GET",
            self.endpoint.origin
            + self.endpoint.path("")
            + "?"
            + "&".join(f"{k}={sigv4.percent_encode(v)}" for k, v in self.list_query()),
        )
        if obj.allowed or listing.allowed:
            what = "GET an object" if obj.allowed else "LIST the bucket"
            self.add(name, FAIL, advice.public(what, obj if obj.allowed else listing))
        elif obj.refused and listing.refused:
            self.add(name, PASS, f"unsigned GET {obj}, unsigned LIST {listing}")
        else:
            self.add(name, FAIL, f"unexpected answers: GET {obj}, LIST {listing}")

    def cannot_delete(self, identity: str, source: CredentialSource) -> None:
        reply = self.raw("DELETE", source, self.endpoint.path(self.canary), ())
        name = f"{identity} cannot DELETE"
        if reply.allowed:
            self.add(name, FAIL, advice.can_delete(identity, reply))
        elif reply.refused:
            self.add(name, PASS, f"{reply}")
        else:
            self.add(name, FAIL, f"unexpected answer {reply}")

    def cannot_list(self, identity: str, source: CredentialSource) -> None:
        reply = self.raw("GET", source, self.endpoint.path(""), self.list_query())
        name = f"{identity} cannot LIST"
        if 200 <= reply.status < 300:
            bucket = policies.bucket_arn(self.settings.bucket)
            self.add(name, FAIL, advice.can_list(identity, reply, bucket))
        elif reply.refused:
            self.add(name, PASS, f"{reply}")
        else:
            self.add(name, FAIL, f"unexpected answer {reply}")

    def url_form(self) -> None:
        region = self.settings.region
        problems: list[str] = []
        for url in self.urls:
            query = parse_qs(urlsplit(url).query)
            algorithm = query.get("X-Amz-Algorithm", [""])[0]
            scope = query.get("X-Amz-Credential", [""])[0].split("/")[2:]
            if algorithm != sigv4.ALGORITHM or "Signature" in query or "AWSAccessKeyId" in query:
                problems.append(f"not SigV4 ({algorithm or 'no X-Amz-Algorithm'})")
            elif scope != [region, "s3", "aws4_request"]:
                problems.append(f"credential scope {'/'.join(scope)!r}, not {region}/s3")
        if not self.urls:
            self.add("URLs use SigV4 for AWS_REGION", SKIP, "no URL could be signed")
        elif problems:
            self.add("URLs use SigV4 for AWS_REGION", FAIL, "; ".join(sorted(set(problems))))
        else:
            self.add(
                "URLs use SigV4 for AWS_REGION",
                PASS,
                f"{sigv4.ALGORITHM}, scope {region}/s3, upload and download URLs",
            )
        name = "URLs use the regional endpoint"
        if not self.on_aws:
            self.add(
                name,
                SKIP,
                f"endpoint is not AWS: path-style on {self.endpoint.host} (S3_ENDPOINT_URL)",
            )
            return
        # Stated here on purpose, not taken from BucketEndpoint: this audits that formula.
        expected = f"{self.settings.bucket}.s3.{region}.amazonaws.com"
        hosts = {urlsplit(url).netloc for url in self.urls}
        schemes = {urlsplit(url).scheme for url in self.urls}
        if hosts == {expected} and schemes == {"https"}:
            self.add(name, PASS, f"https://{expected}")
        else:
            self.add(name, FAIL, advice.wrong_hosts(sorted(hosts), expected))

    def region(self, source: CredentialSource | None) -> None:
        name = "bucket answers from AWS_REGION"
        region = self.settings.region
        if source is not None:
            self.raw("HEAD", source, self.endpoint.path(""), ())
        reported = {
            r.headers["x-amz-bucket-region"]
            for r in self.replies
            if r.headers.get("x-amz-bucket-region")
        }
        redirects = [r for r in self.replies if r.status in (301, 307) or r.code in _REGION_CODES]
        if reported - {region}:
            actual = ", ".join(sorted(reported - {region}))
            self.add(name, FAIL, advice.wrong_region(actual, region))
        elif redirects:
            self.add(name, FAIL, advice.redirected(redirects[0], region))
        elif reported:
            self.add(name, PASS, f"x-amz-bucket-region: {region}, no redirect")
        elif self.on_aws:
            self.add(name, PASS, "no redirect (S3 did not name the bucket's region)")
        else:
            self.add(
                name,
                SKIP,
                "endpoint is not AWS: S3-compatible servers ignore the region (no redirect seen)",
            )

    def swapped(self, upload_put: bool, upload_get: bool, read_get: bool, read_put: bool) -> None:
        if (upload_get or read_put) and not upload_put and not read_get:
            self.add("uploader and reader not swapped", FAIL, advice.SWAPPED)


def run(settings: Settings, clock: Clock = utc_now) -> list[Result]:
    """Every check against the configured bucket, in order (real HTTP)."""
    probe = BucketProbe(settings, clock)
    sources = probe.credentials()
    uploader, reader = sources["uploader"], sources["reader"]
    upload_put = upload_get = read_get = read_put = False
    if uploader is not None:
        upload_put = probe.uploader_can_put(uploader)
        upload_get = probe.uploader_cannot_get(uploader, upload_put)
    if reader is not None:
        read_get = probe.reader_can_get(reader, upload_put)
        read_put = probe.reader_cannot_put(reader, reader if read_get else None)
    probe.not_public()
    for identity, source in (("uploader", uploader), ("reader", reader)):
        if source is not None:
            probe.cannot_delete(identity, source)
    for identity, source in (("uploader", uploader), ("reader", reader)):
        if source is not None:
            probe.cannot_list(identity, source)
    probe.url_form()
    probe.region(reader or uploader)
    if uploader is not None and reader is not None:
        probe.swapped(upload_put, upload_get, read_get, read_put)
    return probe.results


def render(settings: Settings, results: Sequence[Result], out: TextIO) -> None:
    """The table, with a header naming what was checked and a one-line verdict."""
    where = BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url).origin
    kind = "AWS" if settings.endpoint_url is None else "not AWS"
    render_table(
        f"avatar-signer check: bucket {settings.bucket}, AWS_REGION {settings.region}, "
        f"endpoint {where} ({kind})",
        f"The canary {ObjectKeys(settings.key_prefix).canary_key()} stays in the bucket: "
        "neither identity may delete it.",
        results,
        out,
    )
