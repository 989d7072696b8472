"""Every identity's credential source, built from the settings and kept fresh.

`build_watcher(settings)` makes one source per identity (key files, and the CloudFront key
file when configured, are read now: a missing or bad file stops start-up with a one-line
SettingsError naming its variable) and refuses
two identities that are one (the same key id or the same role): the least-privilege model
needs them apart. `CredentialWatcher.refresh_all()` refreshes every source and says whether
each identity can sign a URL of its default ttl; the server runs it every
`REFRESH_PERIOD_SECONDS` in a worker thread and turns the answer into health SERVING /
NOT_SERVING.

With a `prover` (one signed request to S3, from the storage layer), two more rules hold:

* a rotated key pair from files is adopted only once S3 accepts it, and only if it is not
  another identity's key id (the identities stay apart after rotation, too);
* every `probe_seconds` (CREDENTIALS_PROBE_SECONDS; 0: never) the pair in force is put to
  S3; a pair S3 refuses (a deliberate
  revocation) makes its identity unusable: health NOT_SERVING, the metric
  avatarsigner_credentials_valid 0, a WARNING, until S3 accepts it again or another pair
  takes its place (a rotated pair, proven by S3 before it is adopted; a renewed role
  session). The refusal is about that one pair, never about the identity. No answer from
  S3 changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from ..settings import Settings, SettingsError
from ..settings.identities import (
    AssumedRole,
    IdentitySetting,
    KeyPairFiles,
    naming_variable,
)
from ..signing.clock import Clock, utc_now
from ..signing.key_pairs import Credentials, covers
from .cloudfront_key import CloudFrontKeyFile, check_key_file
from .key_files import FileCredentials, KeyFileError, read_key_pair
from .proofs import Proof, Prover, Verdict, Vet
from .roles import RoleCredentials, StsClientFactory, default_sts_client
from .sources import ManagedSource, StaticCredentials

log = logging.getLogger("avatarsigner.credentials")

#: How often the server's watcher re-checks key files and role sessions.
REFRESH_PERIOD_SECONDS = 1.0
#: How often the pair in force is put to S3 (with a prover), to notice a revoked key.
PROBE_PERIOD_SECONDS = 60.0


def source_for(
    setting: IdentitySetting,
    *,
    identity: str,
    region: str,
    max_ttl_seconds: int,
    clock: Clock = utc_now,
    sts: StsClientFactory | None = None,
    vet: Vet | None = None,
) -> ManagedSource:
    """The source for one identity's setting (files are read now; a role is assumed later).
    `vet`: how a rotated pair from files is proven before it is adopted."""
    if isinstance(setting, Credentials):
        return StaticCredentials(setting, identity)
    if isinstance(setting, KeyPairFiles):
        return FileCredentials(setting, identity, vet)
    half = setting.duration_seconds // 2
    return RoleCredentials(
        setting,
        identity=identity,
        sts=sts or default_sts_client(region),
        refresh_before=timedelta(seconds=min(max_ttl_seconds + 60, half)),
        clock=clock,
    )


def _identifier(setting: IdentitySetting) -> str | None:
    """What makes an identity itself: its key id (read now for files) or its role ARN."""
    if isinstance(setting, Credentials):
        return setting.access_key_id
    if isinstance(setting, KeyPairFiles):
        try:
            _, creds = read_key_pair(setting)
        except KeyFileError as error:
            raise SettingsError(error.variable, error.problem) from None
        return creds.access_key_id
    if isinstance(setting, AssumedRole):
        return setting.role_arn
    return None


def require_distinct(settings: Mapping[str, IdentitySetting]) -> None:
    """SettingsError when two identities share a key id or a role (one line, no secret)."""
    seen: dict[str, str] = {}
    for identity, setting in settings.items():
        identifier = _identifier(setting)
        if identifier is None:
            continue
        if identifier in seen:
            first = seen[identifier]
            raise SettingsError(
                naming_variable(identity, setting),
                f"must differ from {naming_variable(first, settings[first])}: the {first} "
                f"and the {identity} must be two identities",
            )
        seen[identifier] = identity


def check_sources(settings: Settings) -> None:
    """What start-up needs before anything runs: every key file readable and valid (the
    CloudFront key too), and every identity distinct (SettingsError, one line naming the
    variable)."""
    require_distinct(settings.identities())
    if settings.cloudfront is not None:
        check_key_file(settings.cloudfront)


class CredentialWatcher:
    """Keeps every identity's source fresh and says whether all of them can sign.

    An identity is usable when it holds credentials that outlive a URL of its default ttl.
    The CloudFront key, when configured, is re-checked with them (it never expires, and a
    bad new file never replaces a good key, so it has no say in health).
    """

    def __init__(
        self,
        sources: Mapping[str, ManagedSource],
        needed: Mapping[str, timedelta],
        *,
        clock: Clock = utc_now,
        period: float = REFRESH_PERIOD_SECONDS,
        prover: Prover | None = None,
        probe_seconds: float = PROBE_PERIOD_SECONDS,
        cloudfront: CloudFrontKeyFile | None = None,
    ) -> None:
        self.sources = dict(sources)
        self.cloudfront = cloudfront
        self._needed = dict(needed)
        self._clock = clock
        self.period = period
        self._prover = prover
        self._probe_seconds = probe_seconds
        self._probed_at = time.monotonic()  # the first probe comes one period after start
        self._usable: dict[str, bool] = {}
        # identity -> the pair S3 last refused for it (in force, or replaced since)
        self._refused: dict[str, Credentials] = {}
        for identity, source in self.sources.items():
            if isinstance(source, FileCredentials) and prover is not None:
                source.vet = self._vetting(identity)

    def _vetting(self, identity: str) -> Vet:
        """How `identity`'s rotated pair is proven: not another identity's key id, then S3."""
        assert self._prover is not None
        prover = self._prover

        def vet(creds: Credentials) -> Proof:
            for other, source in self.sources.items():
                current = source.current()
                if other != identity and current and current.access_key_id == creds.access_key_id:
                    return Proof(Verdict.INVALID, f"the {other}'s key id: identities must differ")
            return prover(identity, creds)

        return vet

    @property
    def valid(self) -> dict[str, bool]:
        """identity -> False while its pair in force is one S3 refused."""
        return {identity: not self._refused_in_force(identity) for identity in self.sources}

    def _refused_in_force(self, identity: str) -> bool:
        refused = self._refused.get(identity)
        return refused is not None and refused == self.sources[identity].current()

    def probe(self) -> None:
        """Blocking: put each identity's pair in force to S3 and remember the verdicts."""
        if self._prover is None:
            return
        self._probed_at = time.monotonic()
        for identity, source in self.sources.items():
            creds = source.current()
            if creds is None:
                continue
            proof = self._prover(identity, creds)
            if proof.verdict is Verdict.UNKNOWN:
                continue
            valid = proof.verdict is Verdict.VALID
            refused_before = self._refused.get(identity) == creds
            if valid == refused_before:  # S3 changed its mind about this pair
                if valid:
                    log.info("S3 accepts the %s's key pair again", identity)
                else:
                    log.warning(
                        "S3 refuses the %s's key pair in force (%s): revoked? health says "
                        "NOT_SERVING until it is replaced",
                        identity,
                        proof.detail,
                        extra={"identity": identity, "key_id": creds.access_key_id},
                    )
            if valid:
                self._refused.pop(identity, None)
            else:
                self._refused[identity] = creds

    def __getitem__(self, identity: str) -> ManagedSource:
        return self.sources[identity]

    def refresh_all(self) -> bool:
        """Blocking: refresh every source, then True when every identity is usable."""
        for source in self.sources.values():
            source.refresh()
        if self.cloudfront is not None:
            self.cloudfront.refresh()
        if (
            self._prover is not None
            and self._probe_seconds > 0
            and time.monotonic() - self._probed_at >= self._probe_seconds
        ):
            self.probe()
        now = self._clock()
        for identity, source in self.sources.items():
            creds = source.current()
            needed = self._needed.get(identity, timedelta(0))
            usable = covers(creds, now + needed) and not self._refused_in_force(identity)
            if usable != self._usable.get(identity, True):
                if usable:
                    log.info("%s credentials usable again", identity)
                else:
                    log.warning(
                        "%s has no credentials that outlive a %d s URL",
                        identity,
                        needed.total_seconds(),
                        extra={"identity": identity},
                    )
            self._usable[identity] = usable
        return all(self._usable.values())

    def seconds_left(self) -> dict[str, float]:
        """Seconds until each identity's current credentials expire (inf: never; 0: none)."""
        now = self._clock()
        left: dict[str, float] = {}
        for identity, source in self.sources.items():
            creds = source.current()
            if creds is None:
                left[identity] = 0.0
            elif creds.expires_at is None:
                left[identity] = float("inf")
            else:
                left[identity] = max(0.0, (creds.expires_at - now).total_seconds())
        return left

    async def watch(
        self, on_change: Callable[[bool], Awaitable[None]], last: bool | None = None
    ) -> None:
        """Forever: refresh (in a thread) every `period` s; await on_change(usable) when it
        differs from the last answer (`last`: what the caller already knows)."""
        while True:
            try:
                usable = await asyncio.to_thread(self.refresh_all)
            except Exception:
                log.exception("credential refresh failed")
                usable = False
            if usable != last:
                await on_change(usable)
                last = usable
            await asyncio.sleep(self.period)


def build_watcher(
    settings: Settings, clock: Clock = utc_now, prover: Prover | None = None
) -> CredentialWatcher:
    """Each identity's source (key files are read now) and their watcher; with a prover,
    rotations are proven and the pairs in force probed (see the module docstring).

    SettingsError (one line naming the variable) when a key file cannot be used or two
    identities are one.
    """
    identities = settings.identities()
    check_sources(settings)
    rules = settings.ttl_rules()
    return CredentialWatcher(
        {
            identity: source_for(
                setting,
                identity=identity,
                region=settings.region,
                max_ttl_seconds=rules[identity].maximum,
                clock=clock,
            )
            for identity, setting in identities.items()
        },
        needed={identity: timedelta(seconds=rule.default) for identity, rule in rules.items()},
        clock=clock,
        prover=prover,
        probe_seconds=settings.credentials_probe_seconds,
        cloudfront=CloudFrontKeyFile(settings.cloudfront) if settings.cloudfront else None,
    )
