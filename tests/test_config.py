"""Settings: every bad or missing variable stops start-up with one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from avatarsigner_server.app import wiring
from avatarsigner_server.settings import SettingsError, host_port
from avatarsigner_server.settings import load as load_settings
from servers import DIRECT_ENV, FAKE_ENV

MISSING = object()

# (id, variable to change, new value or MISSING, the variable the error must name)
BAD_SETTINGS = [
    ("upload-key-missing", "S3_UPLOAD_KEY", MISSING, "S3_UPLOAD_KEY"),
    ("upload-secret-missing", "S3_UPLOAD_SECRET", MISSING, "S3_UPLOAD_SECRET"),
    ("read-key-missing", "S3_READ_KEY", MISSING, "S3_READ_KEY"),
    ("read-secret-missing", "S3_READ_SECRET", MISSING, "S3_READ_SECRET"),
    ("region-missing", "AWS_REGION", MISSING, "AWS_REGION"),
    ("bucket-missing", "S3_BUCKET", MISSING, "S3_BUCKET"),
    ("upload-key-blank", "S3_UPLOAD_KEY", "   ", "S3_UPLOAD_KEY"),
    ("upload-key-not-a-key-id", "S3_UPLOAD_KEY", "has spaces/and+slash", "S3_UPLOAD_KEY"),
    ("read-secret-too-short", "S3_READ_SECRET", "short", "S3_READ_SECRET"),
    ("upload-secret-with-space", "S3_UPLOAD_SECRET", "abc def ghi jkl", "S3_UPLOAD_SECRET"),
    ("identical-keys", "S3_READ_KEY", FAKE_ENV["S3_UPLOAD_KEY"], "S3_READ_KEY"),
    ("region-garbage", "AWS_REGION", "mars", "AWS_REGION"),
    ("region-uppercase", "AWS_REGION", "EU-WEST-1", "AWS_REGION"),
    ("bucket-uppercase", "S3_BUCKET", "Avatars", "S3_BUCKET"),
    ("bucket-too-short", "S3_BUCKET", "ab", "S3_BUCKET"),
    ("bucket-with-slash", "S3_BUCKET", "a/b", "S3_BUCKET"),
    ("bucket-dots-virtual-hosted", "S3_BUCKET", "my.bucket", "S3_BUCKET"),
    ("endpoint-no-scheme", "S3_ENDPOINT_URL", "127.0.0.1:8333", "S3_ENDPOINT_URL"),
    ("endpoint-ftp", "S3_ENDPOINT_URL", "ftp://127.0.0.1", "S3_ENDPOINT_URL"),
    ("endpoint-with-path", "S3_ENDPOINT_URL", "http://127.0.0.1:8333/bucket", "S3_ENDPOINT_URL"),
    ("endpoint-bad-port", "S3_ENDPOINT_URL", "http://127.0.0.1:99999", "S3_ENDPOINT_URL"),
    ("grpc-port-word", "GRPC_PORT", "fifty", "GRPC_PORT"),
    ("grpc-port-too-big", "GRPC_PORT", "70000", "GRPC_PORT"),
    ("grpc-port-negative", "GRPC_PORT", "-1", "GRPC_PORT"),
    ("metrics-port-word", "METRICS_PORT", "x", "METRICS_PORT"),
    ("upload-ttl-zero", "UPLOAD_TTL_SECONDS", "0", "UPLOAD_TTL_SECONDS"),
    ("upload-ttl-float", "UPLOAD_TTL_SECONDS", "1.5", "UPLOAD_TTL_SECONDS"),
    ("upload-ttl-over-max", "UPLOAD_TTL_SECONDS", "7200", "UPLOAD_TTL_SECONDS"),
    ("upload-max-over-7-days", "UPLOAD_MAX_TTL_SECONDS", "604801", "UPLOAD_MAX_TTL_SECONDS"),
    ("download-ttl-word", "DOWNLOAD_TTL_SECONDS", "five", "DOWNLOAD_TTL_SECONDS"),
    ("download-ttl-over-max", "DOWNLOAD_TTL_SECONDS", "1201", "DOWNLOAD_TTL_SECONDS"),
    ("download-max-zero", "DOWNLOAD_MAX_TTL_SECONDS", "0", "DOWNLOAD_MAX_TTL_SECONDS"),
    ("max-upload-zero", "MAX_UPLOAD_BYTES", "0", "MAX_UPLOAD_BYTES"),
    ("max-upload-over-5gib", "MAX_UPLOAD_BYTES", str(5 * 1024**3 + 1), "MAX_UPLOAD_BYTES"),
    ("max-upload-suffix", "MAX_UPLOAD_BYTES", "5MB", "MAX_UPLOAD_BYTES"),
    ("types-empty-list", "ALLOWED_CONTENT_TYPES", ",,", "ALLOWED_CONTENT_TYPES"),
    ("types-not-image", "ALLOWED_CONTENT_TYPES", "image/png,text/html", "ALLOWED_CONTENT_TYPES"),
    ("types-svg", "ALLOWED_CONTENT_TYPES", "image/svg+xml", "ALLOWED_CONTENT_TYPES"),
    ("types-params", "ALLOWED_CONTENT_TYPES", "image/png; q=1", "ALLOWED_CONTENT_TYPES"),
    ("types-uppercase", "ALLOWED_CONTENT_TYPES", "image/PNG", "ALLOWED_CONTENT_TYPES"),
    ("prefix-absolute", "S3_KEY_PREFIX", "/profiles/", "S3_KEY_PREFIX"),
    ("prefix-no-slash", "S3_KEY_PREFIX", "profiles", "S3_KEY_PREFIX"),
    ("prefix-dot-dot", "S3_KEY_PREFIX", "../", "S3_KEY_PREFIX"),
    ("grace-word", "SHUTDOWN_GRACE_SECONDS", "soon", "SHUTDOWN_GRACE_SECONDS"),
    ("grace-negative", "SHUTDOWN_GRACE_SECONDS", "-1", "SHUTDOWN_GRACE_SECONDS"),
    ("log-level-unknown", "LOG_LEVEL", "LOUD", "LOG_LEVEL"),
    ("audit-download-ids-word", "AUDIT_DOWNLOAD_IDS", "some", "AUDIT_DOWNLOAD_IDS"),
    ("grpc-host-with-space", "GRPC_HOST", "bad host", "GRPC_HOST"),
    ("grpc-host-with-port", "GRPC_HOST", "127.0.0.1:50051", "GRPC_HOST"),
    ("health-port-word", "HEALTH_PORT", "probe", "HEALTH_PORT"),
    ("health-port-is-grpc-port", "HEALTH_PORT", "50051", "HEALTH_PORT"),
    ("region-china", "AWS_REGION", "cn-north-1", "AWS_REGION"),
    ("region-govcloud", "AWS_REGION", "us-gov-west-1", "AWS_REGION"),
    ("region-iso", "AWS_REGION", "us-isob-east-1", "AWS_REGION"),
    ("upload-mode-unknown", "UPLOAD_MODE", "later", "UPLOAD_MODE"),
    ("verifier-key-missing", "S3_VERIFY_KEY", MISSING, "S3_VERIFY_KEY"),
    ("verifier-secret-missing", "S3_VERIFY_SECRET", MISSING, "S3_VERIFY_SECRET"),
    ("verifier-same-as-reader", "S3_VERIFY_KEY", FAKE_ENV["S3_READ_KEY"], "S3_VERIFY_KEY"),
    ("staging-inside-profiles", "S3_STAGING_PREFIX", "profiles/staged/", "S3_STAGING_PREFIX"),
    ("staging-holds-profiles", "S3_KEY_PREFIX", "uploads/avatars/", "S3_STAGING_PREFIX"),
    ("staging-no-slash", "S3_STAGING_PREFIX", "uploads", "S3_STAGING_PREFIX"),
    ("types-unverifiable", "ALLOWED_CONTENT_TYPES", "image/png,image/gif", "ALLOWED_CONTENT_TYPES"),
    ("max-pixels-over-decoder", "MAX_IMAGE_PIXELS", "100000000", "MAX_IMAGE_PIXELS"),
    ("max-side-zero", "MAX_IMAGE_SIDE", "0", "MAX_IMAGE_SIDE"),
    ("max-frames-zero", "MAX_IMAGE_FRAMES", "0", "MAX_IMAGE_FRAMES"),
    ("confirm-concurrency-zero", "CONFIRM_CONCURRENCY", "0", "CONFIRM_CONCURRENCY"),
    ("confirm-timeout-word", "CONFIRM_TIMEOUT_SECONDS", "soon", "CONFIRM_TIMEOUT_SECONDS"),
    ("delete-old-versions-maybe", "DELETE_OLD_VERSIONS", "maybe", "DELETE_OLD_VERSIONS"),
]


def _env_with(name: str, value: object) -> dict[str, str]:
    env = dict(FAKE_ENV) | {"GRPC_PORT": "50051"}
    if value is MISSING:
        env.pop(name, None)
    else:
        assert isinstance(value, str)
        env[name] = value
    return env


@pytest.mark.parametrize(
    ("name", "value", "named"), [c[1:] for c in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS]
)
def test_bad_setting_is_refused_naming_the_variable(name: str, value: object, named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        # What `serve` checks before anything runs: the settings, then what they name.
        wiring.check(load_settings(_env_with(name, value)))
    message = str(caught.value)
    assert caught.value.name == named
    assert message.startswith(f"{named}: ")
    assert "\n" not in message


def test_defaults_follow_the_design() -> None:
    defaults = {k: v for k, v in FAKE_ENV.items() if k != "METRICS_PORT"}
    settings = load_settings(defaults | {"GRPC_PORT": "50051"})
    assert settings.grpc_port == 50051
    assert settings.metrics_port == 9464
    assert (settings.upload_ttl.default, settings.download_ttl.default) == (600, 300)
    assert settings.max_upload_bytes == 5 * 1024 * 1024
    assert settings.allowed_content_types == ("image/jpeg", "image/png", "image/webp")
    assert settings.key_prefix == "profiles/"
    assert settings.endpoint_url is None
    assert settings.shutdown_grace_seconds == 10.0
    assert settings.audit_download_ids is False  # one audit line per download call


def test_settings_repr_hides_secrets() -> None:
    settings = load_settings(FAKE_ENV)
    text = repr(settings) + repr(settings.uploader) + repr(settings.reader)
    assert FAKE_ENV["S3_UPLOAD_SECRET"] not in text
    assert FAKE_ENV["S3_READ_SECRET"] not in text


def test_endpoint_is_normalised_to_origin() -> None:
    settings = load_settings(FAKE_ENV | {"S3_ENDPOINT_URL": "http://127.0.0.1:8333/"})
    assert settings.endpoint_url == "http://127.0.0.1:8333"


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in FAKE_ENV}
    return subprocess.run(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("S3_BUCKET", MISSING),
        ("S3_READ_KEY", FAKE_ENV["S3_UPLOAD_KEY"]),
        ("S3_UPLOAD_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    ],
    ids=["missing-bucket", "identical-keys", "secret-pasted-as-key"],
)
def test_serve_exits_2_with_one_line_and_no_secret(name: str, value: object) -> None:
    env = _env_with(name, value)
    result = _serve(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr
    for secret in (env.get("S3_UPLOAD_SECRET"), env.get("S3_READ_SECRET"), value):
        if isinstance(secret, str) and name != "S3_READ_KEY":
            assert secret not in result.stderr


def test_defaults_keep_max_ttls_inside_a_one_hour_role_session() -> None:
    settings = load_settings(FAKE_ENV)
    assert (settings.upload_ttl.maximum, settings.download_ttl.maximum) == (1200, 1200)
    role = FAKE_ENV | {"S3_UPLOAD_ROLE_ARN": "arn:aws:iam::123456789012:role/uploader"}
    del role["S3_UPLOAD_KEY"], role["S3_UPLOAD_SECRET"]
    assert load_settings(role).uploader  # 3600 s sessions cover 1200 s URLs with room to renew


def test_role_session_too_short_for_the_longest_url_is_refused() -> None:
    env = FAKE_ENV | {
        "S3_UPLOAD_ROLE_ARN": "arn:aws:iam::123456789012:role/uploader",
        "S3_ROLE_DURATION_SECONDS": "3600",
        "UPLOAD_MAX_TTL_SECONDS": "1800",
    }
    del env["S3_UPLOAD_KEY"], env["S3_UPLOAD_SECRET"]
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert caught.value.name == "S3_ROLE_DURATION_SECONDS"
    assert "UPLOAD_MAX_TTL_SECONDS" in str(caught.value) and "3720" in str(caught.value)


@pytest.mark.parametrize(
    ("given", "kept"), [("::1", "::1"), ("[::1]", "::1"), ("localhost", "localhost")]
)
def test_grpc_host_is_kept_bare_and_bracketed_for_binding(given: str, kept: str) -> None:
    settings = load_settings(FAKE_ENV | {"GRPC_HOST": given})
    assert settings.grpc_host == kept
    assert host_port(kept, 1) == (f"[{kept}]:1" if ":" in kept else f"{kept}:1")


def test_endpoint_host_is_lowercased_like_the_signed_host_header() -> None:
    settings = load_settings(FAKE_ENV | {"S3_ENDPOINT_URL": "http://MinIO.Example:9000"})
    assert settings.endpoint_url == "http://minio.example:9000"


def test_other_partitions_are_fine_behind_an_s3_compatible_endpoint() -> None:
    env = FAKE_ENV | {"AWS_REGION": "cn-north-1", "S3_ENDPOINT_URL": "http://127.0.0.1:9000"}
    assert load_settings(env).region == "cn-north-1"


@pytest.mark.parametrize(("health", "workers"), [("9464", "1"), ("9465", "2")])
def test_health_port_must_not_be_a_metrics_port(health: str, workers: str) -> None:
    env = FAKE_ENV | {
        "GRPC_PORT": "50051",
        "METRICS_PORT": "9464",
        "HEALTH_PORT": health,
        "WORKERS": workers,
    }
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert caught.value.name == "HEALTH_PORT"


def test_verified_mode_without_a_verifier_names_both_ways_out() -> None:
    env = {k: v for k, v in FAKE_ENV.items() if not k.startswith("S3_VERIFY_")}
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert caught.value.name == "S3_VERIFY_KEY"
    assert "S3_VERIFY_SECRET" in str(caught.value) and "UPLOAD_MODE=direct" in str(caught.value)


def test_direct_mode_refuses_leftover_verifier_settings() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(FAKE_ENV | {"UPLOAD_MODE": "direct"})
    assert caught.value.name == "S3_VERIFY_KEY"
    direct = load_settings(DIRECT_ENV)
    assert not direct.uploads.verified and direct.verifier is None
    # Direct mode keeps what it always allowed: any image/* type, any prefix.
    direct = load_settings(DIRECT_ENV | {"ALLOWED_CONTENT_TYPES": "image/gif"})
    wiring.check(direct)
    assert direct.allowed_content_types == ("image/gif",)


def test_verified_mode_is_the_default() -> None:
    settings = load_settings(FAKE_ENV)
    assert settings.uploads.verified
    assert settings.uploads.staging_prefix == "uploads/"
    assert set(settings.identities()) == {"uploader", "reader", "verifier"}
