"""`avatar-signer check`: the least-privilege audit, against the real bucket.

With the service's own settings and credentials, it asks S3 itself what each identity can
do, using plain HTTP requests with presigned URLs made by the service's own signers (each
also fed the *other* identities' credentials) and `sigv4.presign` for DELETE and LIST.
Each identity must be able to do its one job, and nothing else:

    direct mode    the uploader can PUT the avatar canary and cannot GET it; the reader can
                   GET it and cannot PUT (the canary unchanged)
    verified mode  the uploader can PUT a staged canary (a fresh key every run: an upload
                   URL writes a key only once) and cannot PUT an avatar or GET anything; the
                   verifier can GET the staged canary and PUT the avatar canary, and cannot
                   GET avatars or PUT staged uploads; the reader can GET the avatar canary
                   and cannot GET staged uploads or PUT (the canary unchanged)
    both           an unsigned GET or LIST is refused (the bucket is not public), and so
                   is an unsigned PUT of a canary (nor publicly writable); no
                   identity can DELETE or LIST; URLs are SigV4 for AWS_REGION on the
                   regional virtual-hosted endpoint; the bucket answers from AWS_REGION

Every row is PASS, FAIL or SKIP; a SKIP says why the check means nothing here (an
S3-compatible server at S3_ENDPOINT_URL is not AWS: it has no regional endpoint and ignores
the region) and never counts as a pass. The exit status is 1 when any row fails.

The canaries stay in the bucket (by design no identity may delete them): the avatar canary
is overwritten by each run, a staged canary is new each run and expires with the staging
lifecycle rule. Nothing printed contains a secret, a session token or a presigned URL.
Below the table, NOT_PROVEN lists what these requests cannot show.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from ...signing.url_signers import (
    BucketEndpoint,
    DownloadSigner,
    UploadSigner,
    presign_request,
)
from ...storage.s3_http import Reply, send
from .. import policies
from . import advice
from .report import FAIL, PASS, SKIP, Result
from .report import render as render_table

HELP = """\
Audit the configured credentials against the configured bucket (settings from the
environment, as for `serve`), with real requests signed by the service's own signers.
Each identity must do its one job and nothing else:

  direct mode:    uploader can PUT the avatar canary (a reserved key no user id can
                  produce) but not GET it; reader can GET it but not PUT
  verified mode:  uploader can PUT a staged canary (new each run), not PUT an avatar, not
                  GET; verifier can GET the staged canary and PUT the avatar canary, not
                  GET avatars, not PUT staged uploads; reader can GET the avatar canary,
                  not GET staged uploads, not PUT
  always:         an unsigned GET or LIST is refused (the bucket is not public), and
                  so is an unsigned PUT of a canary (not publicly writable); no
                  identity can DELETE or LIST; URLs are SigV4 for AWS_REGION on the
                  regional virtual-hosted endpoint; the bucket answers from AWS_REGION
  rate limits:    with RATE_LIMIT_REDIS_URL set, the store runs a check (server, version
                  and address shown, never the password)

With CLOUDFRONT_URL set, also: the CloudFront key file holds a key CloudFront accepts,
and a download URL and viewer cookies signed with it verify with its public half. It
cannot reach CloudFront itself: whether the distribution trusts the key and serves the
avatars is one SKIP row, never a pass.

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
_REJECTED_KEY = ("SignatureDoesNotMatch", "InvalidAccessKeyId")
# What the table cannot show: printed under it, so nobody takes "ok" for more than it is.
NOT_PROVEN = (
    "the IAM conditions (s3:authType, s3:signatureAge) and the bucket policy's denial of "
    "other principals: compare the applied policies with `avatar-signer policies`",
    "that no other principal of the account (an admin role, a CI user) can read or write "
    "the avatars: only the service's identities were tried",
    "that the identities are refused outside their prefixes, or on other buckets",
    "the Block Public Access, Object Ownership, lifecycle and CORS settings themselves: "
    "only that unsigned requests are refused",
    "that requests without TLS are refused (the check uses the configured endpoint as is)",
    "anything about what the service signs (types, sizes, fixed headers) or about a CDN "
    "in front of the bucket: the test suite proves those",
)


@dataclass(frozen=True)
class Place:
    """Objects one of the service's jobs touches: their name in the table, a canary key,
    and the ARN a policy statement names for them."""

    what: str
    key: str
    arn: str


class BucketProbe:
    """The checks in order; each appends rows to `results`."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.endpoint = BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url)
        self.on_aws = settings.endpoint_url is None
        keys = ObjectKeys(settings.key_prefix, settings.uploads.staging_prefix)
        layout = policies.Layout(
            settings.bucket,
            settings.uploads.mode,
            settings.key_prefix,
            settings.uploads.staging_prefix,
        )
        run = uuid.uuid4().hex
        self.avatars = Place("avatars", keys.canary_key(), layout.avatars)
        self.staged = Place("staged uploads", keys.staging_canary_key(run), layout.staged)
        self.results: list[Result] = []
        self.replies: list[Reply] = []
        self.urls: list[str] = []
        self.canary_body = f"avatar-signer check canary {run}\n".encode()

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
        # The S3 identities only: a bad CloudFront key is a row of its own (cloudfront.py).
        watcher = build_watcher(replace(self.settings, cloudfront=None), self.clock)
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

    # --- requests ---------------------------------------------------------------------------

    def put(
        self, source: CredentialSource, key: str, body: bytes, *, write_once: bool = False
    ) -> Reply:
        signer = UploadSigner(source, self.endpoint, self.settings.region, self.clock)
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        signed = signer.sign(
            key,
            content_type=CANARY_TYPE,
            content_length=len(body),
            checksum_sha256=checksum,
            ttl_seconds=URL_TTL_SECONDS,
            write_once=write_once,
        )
        self.urls.append(signed.url)
        return self.http("PUT", signed.url, body, dict(signed.headers))

    def get(self, source: CredentialSource, key: str) -> Reply:
        signer = DownloadSigner(source, self.endpoint, self.settings.region, self.clock)
        signed = signer.sign(key, ttl_seconds=URL_TTL_SECONDS)
        self.urls.append(signed.url)
        return self.http("GET", signed.url)

    def raw(
        self, method: str, source: CredentialSource, key: str, query: tuple[tuple[str, str], ...]
    ) -> Reply:
        """A presigned request for methods our signers never make (DELETE, LIST, HEAD);
        key "" is the bucket itself."""
        signed_at = self.clock().replace(microsecond=0)
        creds = source.get(signed_at + timedelta(seconds=URL_TTL_SECONDS))
        url = presign_request(
            creds,
            self.endpoint,
            self.settings.region,
            method=method,
            key=key,
            signed_at=signed_at,
            expires_in=URL_TTL_SECONDS,
            query=query,
        )
        return self.http(method, url)

    def list_query(self) -> tuple[tuple[str, str], ...]:
        prefix = self.avatars.key.rsplit("/", 1)[0] + "/"
        return (("list-type", "2"), ("max-keys", "1"), ("prefix", prefix))

    # --- one identity, one action, one place: allowed or not ---------------------------------

    def can_put(
        self, identity: str, source: CredentialSource, place: Place, name: str, **once: bool
    ) -> bool:
        """PASS when the identity may write `place`; True when it stored the canary."""
        reply = self.put(source, place.key, self.canary_body, **once)
        if 200 <= reply.status < 300:
            self.add(name, PASS, f"{reply} ({place.key})")
            return True
        if reply.code in _REJECTED_KEY:
            self.add(name, FAIL, advice.rejected_key_pair(identity, reply))
        elif reply.refused:
            self.add(
                name, FAIL, advice.may_not(identity, "s3:PutObject", place.what, place.arn, reply)
            )
        else:
            self.add(name, FAIL, f"unexpected answer {reply}")
        return False

    def cannot_put(
        self,
        identity: str,
        source: CredentialSource,
        place: Place,
        name: str,
        unchanged_by: CredentialSource | None = None,
    ) -> bool:
        """PASS when writing `place` is refused (and, read back with `unchanged_by`, the
        canary is unchanged); True when the identity CAN write (the failure)."""
        reply = self.put(source, place.key, f"written by the {identity}: never stored\n".encode())
        if reply.allowed:
            self.add(name, FAIL, advice.can_write(identity, place.what, place.arn, reply))
            return True
        if not reply.refused:
            self.add(name, FAIL, f"unexpected answer {reply}")
            return False
        if unchanged_by is not None:
            after = self.get(unchanged_by, place.key)
            if after.status == 200 and after.body != self.canary_body:
                self.add(name, FAIL, f"PUT answered {reply}, yet the canary changed")
                return False
        self.add(name, PASS, f"{reply}")
        return False

    def can_get(
        self, identity: str, source: CredentialSource, place: Place, name: str, stored: bool
    ) -> bool:
        """PASS when the identity reads back the canary's bytes; True when it could read."""
        reply = self.get(source, place.key)
        if reply.status == 200 and (not stored or reply.body == self.canary_body):
            self.add(name, PASS, f"{reply}, same bytes")
            return True
        if reply.status == 200:
            self.add(name, FAIL, "200, but not the canary's bytes")
            return True
        if reply.status == 404 and not stored:
            self.add(name, SKIP, "404: inconclusive, the canary could not be stored")
            return True
        if reply.code in _REJECTED_KEY:
            self.add(name, FAIL, advice.rejected_key_pair(identity, reply))
        elif reply.refused:
            self.add(
                name, FAIL, advice.may_not(identity, "s3:GetObject", place.what, place.arn, reply)
            )
        else:
            self.add(name, FAIL, f"unexpected answer {reply}")
        return False

    def cannot_get(
        self, identity: str, source: CredentialSource, place: Place, name: str, stored: bool
    ) -> bool:
        """PASS when reading `place` is refused; True when the identity CAN read (failure)."""
        reply = self.get(source, place.key)
        if reply.status in (200, 404):  # 404: authorized, just no such key
            self.add(name, FAIL, advice.can_read(identity, place.what, place.arn, reply))
            return True
        if reply.refused and stored:
            self.add(name, PASS, f"{reply}")
        elif reply.refused:
            self.add(name, SKIP, f"{reply}, but inconclusive: the canary could not be stored")
        else:
            self.add(name, FAIL, f"unexpected answer {reply}")
        return False

    # --- the checks every mode has ------------------------------------------------------

    def not_public(self) -> None:
        name = "bucket is not publicly readable"
        obj = self.http("GET", self.endpoint.origin + self.endpoint.path(self.avatars.key))
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

    def not_publicly_writable(self) -> None:
        """Unsigned PUTs of the canaries (reserved keys no user id maps to)."""
        name = "bucket is not publicly writable"
        body = b"unsigned write: must never be stored\n"
        places = (self.avatars, self.staged) if self.settings.uploads.verified else (self.avatars,)
        replies = [
            self.http(
                "PUT",
                self.endpoint.origin + self.endpoint.path(place.key),
                body,
                {"Content-Type": CANARY_TYPE, "Content-Length": str(len(body))},
            )
            for place in places
        ]
        written = [r for r in replies if 200 <= r.status < 300]
        if written:
            self.add(name, FAIL, advice.public("PUT an object", written[0]))
        elif all(r.refused for r in replies):
            self.add(name, PASS, "unsigned PUT " + ", ".join(str(r) for r in replies))
        else:
            answers = ", ".join(str(r) for r in replies)
            self.add(name, FAIL, f"unexpected answers to unsigned PUTs: {answers}")

    def workplaces(self, identity: str) -> tuple[Place, ...]:
        """Where an identity works: where a too-broad statement would also let it delete."""
        if not self.settings.uploads.verified:
            return (self.avatars,)
        return {
            "uploader": (self.staged,),
            "reader": (self.avatars,),
            "verifier": (self.staged,),  # it must delete avatars: see can_delete_avatars
        }[identity]

    def can_delete_avatars(self, verifier: CredentialSource) -> None:
        """The verifier deletes avatars (DeleteAvatar): it must be able to, on the canary."""
        name = "verifier can DELETE avatars"
        reply = self.raw("DELETE", verifier, self.avatars.key, ())
        if reply.status in (200, 204):
            self.add(name, PASS, f"{reply} ({self.avatars.key})")
        elif reply.code in _REJECTED_KEY:
            self.add(name, FAIL, advice.rejected_key_pair("verifier", reply))
        elif reply.refused:
            self.add(
                name,
                FAIL,
                advice.may_not("verifier", "s3:DeleteObject", "avatars", self.avatars.arn, reply),
            )
        else:
            self.add(name, FAIL, f"unexpected answer {reply}")

    def old_versions(self) -> None:
        """Whether the bucket keeps old versions, and if so whether deletion reaches them."""
        name = "deleted avatars leave no old version"
        versioned = any("x-amz-version-id" in reply.headers for reply in self.replies)
        if not versioned:
            self.add(name, PASS, "the bucket keeps no old versions (no x-amz-version-id)")
        elif not self.settings.uploads.delete_old_versions:
            self.add(name, FAIL, advice.VERSIONED)
        else:
            self.add(
                name,
                PASS,
                "versioned bucket; DeleteAvatar deletes old versions (DELETE_OLD_VERSIONS)",
            )

    def cannot_delete(self, identity: str, source: CredentialSource) -> None:
        name = f"{identity} cannot DELETE"
        replies = [self.raw("DELETE", source, place.key, ()) for place in self.workplaces(identity)]
        allowed = [reply for reply in replies if reply.allowed]
        if allowed:
            self.add(name, FAIL, advice.can_delete(identity, allowed[0]))
        elif all(reply.refused for reply in replies):
            self.add(name, PASS, ", ".join(str(reply) for reply in replies))
        else:
            self.add(name, FAIL, f"unexpected answer {next(r for r in replies if not r.refused)}")

    def cannot_list(self, identity: str, source: CredentialSource) -> None:
        reply = self.raw("GET", source, "", self.list_query())
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
            self.raw("HEAD", source, "", ())
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

    # --- the jobs of each mode ------------------------------------------------------------

    def direct(self, sources: dict[str, CredentialSource | None]) -> None:
        uploader, reader = sources["uploader"], sources["reader"]
        upload_put = upload_get = read_get = read_put = False
        if uploader is not None:
            upload_put = self.can_put(
                "uploader", uploader, self.avatars, "uploader can PUT the canary"
            )
            upload_get = self.cannot_get(
                "uploader", uploader, self.avatars, "uploader cannot GET", upload_put
            )
        if reader is not None:
            read_get = self.can_get(
                "reader", reader, self.avatars, "reader can GET the canary", upload_put
            )
            read_put = self.cannot_put(
                "reader",
                reader,
                self.avatars,
                "reader cannot PUT (canary unchanged)",
                reader if read_get else None,
            )
        if uploader is not None and reader is not None:
            self.swapped(upload_put, upload_get, read_get, read_put)

    def verified(self, sources: dict[str, CredentialSource | None]) -> None:
        uploader, reader = sources["uploader"], sources["reader"]
        verifier = sources.get("verifier")
        staged = published = False
        if uploader is not None:
            staged = self.can_put(
                "uploader",
                uploader,
                self.staged,
                "uploader can PUT a staged upload",
                write_once=True,
            )
            self.cannot_put("uploader", uploader, self.avatars, "uploader cannot PUT avatars")
            self.cannot_get("uploader", uploader, self.staged, "uploader cannot GET", staged)
        if verifier is not None:
            self.can_get(
                "verifier", verifier, self.staged, "verifier can GET staged uploads", staged
            )
            published = self.can_put("verifier", verifier, self.avatars, "verifier can PUT avatars")
            self.cannot_get(
                "verifier", verifier, self.avatars, "verifier cannot GET avatars", published
            )
            fresh = Place(self.staged.what, self.staged.key + "-verifier", self.staged.arn)
            self.cannot_put("verifier", verifier, fresh, "verifier cannot PUT staged uploads")
        if reader is not None:
            read = self.can_get("reader", reader, self.avatars, "reader can GET avatars", published)
            self.cannot_get(
                "reader", reader, self.staged, "reader cannot GET staged uploads", staged
            )
            self.cannot_put(
                "reader",
                reader,
                self.avatars,
                "reader cannot PUT (canary unchanged)",
                reader if read else None,
            )
        if verifier is not None:  # last: it removes the avatar canary the others read
            self.can_delete_avatars(verifier)
            self.old_versions()


def run(settings: Settings, clock: Clock = utc_now) -> list[Result]:
    """Every check against the configured bucket, in order (real HTTP)."""
    probe = BucketProbe(settings, clock)
    sources = probe.credentials()
    if settings.uploads.verified:
        probe.verified(sources)
    else:
        probe.direct(sources)
    probe.not_public()
    probe.not_publicly_writable()
    for identity, source in sources.items():
        if source is not None:
            probe.cannot_delete(identity, source)
    for identity, source in sources.items():
        if source is not None:
            probe.cannot_list(identity, source)
    probe.url_form()
    probe.region(sources["reader"] or sources["uploader"])
    return probe.results


def _canaries_left(settings: Settings) -> str:
    """What the run leaves in the bucket."""
    canary = ObjectKeys(settings.key_prefix).canary_key()
    if settings.uploads.verified:
        return (
            f"The verifier deleted the canary {canary} again, as DeleteAvatar does; the "
            "staged test uploads stay until the bucket's lifecycle rule expires them "
            "(no identity may delete them)."
        )
    return f"The canary {canary} stays in the bucket: no identity may delete it."


def render(settings: Settings, results: Sequence[Result], out: TextIO) -> None:
    """The table, with a header naming what was checked and a one-line verdict."""
    where = BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url).origin
    kind = "AWS" if settings.endpoint_url is None else "not AWS"
    render_table(
        f"avatar-signer check: bucket {settings.bucket}, AWS_REGION {settings.region}, "
        f"endpoint {where} ({kind}), {settings.uploads.mode} uploads",
        _canaries_left(settings),
        results,
        out,
    )
    out.write("\nNot proven by these requests:\n")
    for item in NOT_PROVEN:
        out.write(f"  - {item}\n")
