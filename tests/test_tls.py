"""TLS and mutual TLS on the real server, with a throwaway CA made by the tests (pki.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.access import tls
from avatarsigner_server.settings import SettingsError
from avatarsigner_server.settings.access import TlsSettings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from guarded import ALL_RPCS, CallerSpec, caller, code_of, write_callers
from pki import Issued, Pki
from servers import ServerThread, access_control, settings_from

PROFILE_ID = "spiffe://cluster.local/ns/app/sa/profile"
FEED_ID = "feed.app.svc.cluster.local"
PROFILE = caller(
    "profile-service",
    ["CreateUploadUrl", "CreateDownloadUrl"],
    token=False,
    tls_identity=PROFILE_ID,
)
FEED = caller(
    "feed-service", ["CreateDownloadUrl", "BatchCreateDownloadUrls"], tls_identity=FEED_ID
)
BATCH = caller("batch-job", ["BatchCreateDownloadUrls"])  # token only


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_cert(pki: Pki) -> Issued:
    return pki.server()


def _tls_env(pki: Pki, cert: Issued, mutual: bool, callers_file: Path) -> dict[str, str]:
    env = {
        "TLS_CERT_FILE": str(cert.cert_file),
        "TLS_KEY_FILE": str(cert.key_file),
        "CALLERS_FILE": str(callers_file),
    }
    if mutual:
        env["TLS_CLIENT_CA_FILE"] = str(pki.ca_file)
    return env


@pytest.fixture(scope="module")
def mtls_server(
    pki: Pki, server_cert: Issued, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    callers_file = write_callers(
        tmp_path_factory.mktemp("callers") / "callers.toml", [PROFILE, FEED, BATCH]
    )
    running = ServerThread(settings_from(**_tls_env(pki, server_cert, True, callers_file)))
    yield running
    running.stop()


def _channel(
    target: str, trust: bytes, client: Issued | None = None, *, name: str | None = None
) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trust,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, credentials, options=options)


def _health_code(channel: grpc.Channel) -> str:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"


def test_handshake_refused_without_client_certificate(mtls_server: ServerThread, pki: Pki) -> None:
    with _channel(mtls_server.target, pki.ca_pem) as channel:
        # Not even health: the connection never gets past the TLS handshake.
        assert _health_code(channel) == "UNAVAILABLE"
        stub = pb_grpc.AvatarSignerStub(channel)
        assert code_of(stub, "CreateDownloadUrl", BATCH.metadata()) == "UNAVAILABLE"


def test_handshake_refused_with_certificate_from_another_ca(
    mtls_server: ServerThread, pki: Pki, tmp_path: Path
) -> None:
    stranger = Pki(tmp_path / "other-ca", "someone else's CA").client("x", uri=PROFILE_ID)
    with _channel(mtls_server.target, pki.ca_pem, stranger) as channel:
        assert _health_code(channel) == "UNAVAILABLE"


def test_plaintext_client_cannot_talk_to_tls_port(mtls_server: ServerThread) -> None:
    with grpc.insecure_channel(mtls_server.target) as channel:
        assert _health_code(channel) == "UNAVAILABLE"


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_kubelet_probes_reach_plaintext_health_port_beside_the_tls_port(
    pki: Pki, server_cert: Issued, tmp_path: Path, mutual: bool
) -> None:
    """The Kubernetes shape: kubelet's gRPC probes speak plaintext only, without a client
    certificate; HEALTH_PORT answers them while the gRPC port stays TLS-only."""
    callers_file = write_callers(tmp_path / "callers.toml", [BATCH])
    env = _tls_env(pki, server_cert, mutual, callers_file) | {"HEALTH_PORT": "0"}
    running = ServerThread(settings_from(**env))
    try:
        with grpc.insecure_channel(running.target) as channel:
            assert _health_code(channel) == "UNAVAILABLE"
        with grpc.insecure_channel(f"127.0.0.1:{running.server.health_port}") as probe:
            health = health_pb2_grpc.HealthStub(probe)
            for service in ("", "avatarsigner.v1.AvatarSigner"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Health only: no way around TLS and the callers file to the signer.
            stub = pb_grpc.AvatarSignerStub(probe)
            assert code_of(stub, "BatchCreateDownloadUrls", BATCH.metadata()) == "UNIMPLEMENTED"
    finally:
        running.stop()


@pytest.mark.parametrize("rpc", ALL_RPCS)
@pytest.mark.parametrize(
    ("who", "uri", "dns"),
    [(PROFILE, PROFILE_ID, None), (FEED, None, FEED_ID)],
    ids=["uri-san", "dns-san"],
)
def test_client_certificate_identifies_the_caller(
    mtls_server: ServerThread,
    pki: Pki,
    who: CallerSpec,
    uri: str | None,
    dns: str | None,
    rpc: str,
) -> None:
    client = pki.client(f"client-{uri is not None}", uri=uri, dns=dns)
    with _channel(mtls_server.target, pki.ca_pem, client) as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        expected = "OK" if rpc in who.allow else "PERMISSION_DENIED"
        assert code_of(stub, rpc, ()) == expected


def test_unknown_certificate_needs_a_token(mtls_server: ServerThread, pki: Pki) -> None:
    client = pki.client("stranger", uri="spiffe://cluster.local/ns/other/sa/stranger")
    with _channel(mtls_server.target, pki.ca_pem, client) as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        assert code_of(stub, "BatchCreateDownloadUrls", ()) == "UNAUTHENTICATED"
        # The mesh certificate gets it through the handshake; the token says who it is.
        assert code_of(stub, "BatchCreateDownloadUrls", BATCH.metadata()) == "OK"
        assert code_of(stub, "CreateDownloadUrl", BATCH.metadata()) == "PERMISSION_DENIED"


def test_dns_san_spelling_a_uri_identity_is_not_that_caller(
    mtls_server: ServerThread, pki: Pki
) -> None:
    """Identities are typed: a DNS SAN is compared with DNS identities only."""
    client = pki.client("dns-spelling-a-uri", dns=PROFILE_ID)
    with _channel(mtls_server.target, pki.ca_pem, client) as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        assert code_of(stub, "CreateDownloadUrl", ()) == "UNAUTHENTICATED"


def test_certificate_naming_two_callers_identifies_neither(
    mtls_server: ServerThread, pki: Pki
) -> None:
    client = pki.client("profile-and-feed", uri=PROFILE_ID, dns=FEED_ID)
    with _channel(mtls_server.target, pki.ca_pem, client) as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        # Both callers may call CreateDownloadUrl: "the first match" would have passed.
        assert code_of(stub, "CreateDownloadUrl", ()) == "UNAUTHENTICATED"
        assert code_of(stub, "CreateDownloadUrl", FEED.metadata()) == "UNAUTHENTICATED"


def test_dns_identity_matches_whatever_the_case(mtls_server: ServerThread, pki: Pki) -> None:
    client = pki.client("feed-upper", dns=FEED_ID.upper())
    with _channel(mtls_server.target, pki.ca_pem, client) as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        assert code_of(stub, "BatchCreateDownloadUrls", ()) == "OK"


def test_token_and_certificate_of_different_callers_are_refused(
    mtls_server: ServerThread, pki: Pki
) -> None:
    client = pki.client("profile-with-feed-token", uri=PROFILE_ID)
    with _channel(mtls_server.target, pki.ca_pem, client) as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        assert code_of(stub, "CreateDownloadUrl", FEED.metadata()) == "UNAUTHENTICATED"


def test_tls_without_client_ca_serves_token_callers(
    pki: Pki, server_cert: Issued, tmp_path: Path
) -> None:
    callers_file = write_callers(tmp_path / "callers.toml", [FEED, BATCH])
    running = ServerThread(settings_from(**_tls_env(pki, server_cert, False, callers_file)))
    try:
        with _channel(running.target, pki.ca_pem) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            assert code_of(stub, "BatchCreateDownloadUrls", BATCH.metadata()) == "OK"
            assert code_of(stub, "BatchCreateDownloadUrls", ()) == "UNAUTHENTICATED"
        warnings = running.server.access.startup_warnings()
        assert any("feed-service can only authenticate by token" in w for w in warnings)
    finally:
        running.stop()


CLEARTEXT = "bearer tokens travel in cleartext"


def _warnings(**env: str) -> list[str]:
    warnings: list[str] = access_control(settings_from(**env)).startup_warnings()
    return warnings


def test_token_callers_without_tls_warn_that_tokens_travel_in_cleartext(
    pki: Pki, server_cert: Issued, tmp_path: Path
) -> None:
    callers_file = write_callers(tmp_path / "callers.toml", [PROFILE, FEED, BATCH])
    (warning,) = [w for w in _warnings(CALLERS_FILE=str(callers_file)) if CLEARTEXT in w]
    # It names the callers whose tokens are exposed; profile-service has no token.
    assert "feed-service" in warning and "batch-job" in warning
    assert "profile-service" not in warning
    for mutual in (False, True):
        with_tls = _warnings(**_tls_env(pki, server_cert, mutual, callers_file))
        assert not any(CLEARTEXT in w for w in with_tls), with_tls


def test_certificate_only_callers_without_tls_get_no_cleartext_token_warning(
    tmp_path: Path,
) -> None:
    callers_file = write_callers(tmp_path / "callers.toml", [PROFILE])
    assert not any(CLEARTEXT in w for w in _warnings(CALLERS_FILE=str(callers_file)))


def test_reload_rotates_the_server_certificate(pki: Pki, tmp_path: Path) -> None:
    """SIGHUP re-reads the TLS files: new handshakes get the new certificate, no restart."""
    first = pki.server("rotating")
    callers_file = write_callers(tmp_path / "callers.toml", [BATCH])
    running = ServerThread(settings_from(**_tls_env(pki, first, False, callers_file)))
    try:
        other_ca = Pki(tmp_path / "next-ca", "next CA")
        second = other_ca.server("next")
        first.cert_file.write_bytes(second.cert_pem)
        first.key_file.write_bytes(second.key_pem)
        running.server.reload()
        with _channel(running.target, other_ca.ca_pem) as channel:
            assert _health_code(channel) == "OK"
        with _channel(running.target, pki.ca_pem) as channel:
            assert _health_code(channel) == "UNAVAILABLE"
    finally:
        running.stop()


# -- bad TLS settings: one line naming the variable ----------------------------------------


def test_key_that_does_not_match_the_certificate(pki: Pki) -> None:
    one, two = pki.server("one"), pki.server("two")
    with pytest.raises(SettingsError) as caught:
        tls.load(TlsSettings(str(one.cert_file), str(two.key_file)))
    assert caught.value.name == "TLS_KEY_FILE"


def test_files_that_are_not_pem(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    good = pki.server("good")
    for settings, name in [
        (TlsSettings(str(junk), str(good.key_file)), "TLS_CERT_FILE"),
        (TlsSettings(str(good.cert_file), str(junk)), "TLS_KEY_FILE"),
        (
            TlsSettings(str(good.cert_file), str(good.key_file), str(junk)),
            "TLS_CLIENT_CA_FILE",
        ),
    ]:
        with pytest.raises(SettingsError) as caught:
            tls.load(settings)
        assert caught.value.name == name
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TLS_CERT_FILE": "{cert}"}, "TLS_KEY_FILE"),
        ({"TLS_KEY_FILE": "{key}"}, "TLS_CERT_FILE"),
        ({"TLS_CLIENT_CA_FILE": "{ca}"}, "TLS_CLIENT_CA_FILE"),
        ({"TLS_CERT_FILE": "/nonexistent.pem", "TLS_KEY_FILE": "{key}"}, "TLS_CERT_FILE"),
    ],
    ids=["cert-without-key", "key-without-cert", "client-ca-without-tls", "cert-missing"],
)
def test_incomplete_tls_settings(
    pki: Pki, server_cert: Issued, env: dict[str, str], named: str
) -> None:
    paths = {
        "cert": str(server_cert.cert_file),
        "key": str(server_cert.key_file),
        "ca": str(pki.ca_file),
    }
    with pytest.raises(SettingsError) as caught:
        settings_from(**{k: v.format(**paths) for k, v in env.items()})
    assert caught.value.name == named
