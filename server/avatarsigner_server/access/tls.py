"""Transport security: TLS from TLS_CERT_FILE / TLS_KEY_FILE, mutual TLS with
TLS_CLIENT_CA_FILE.

With a client CA, the handshake itself refuses a client without a certificate signed by
that CA: such a caller never reaches a handler. The files are checked at start-up (PEM,
key matches certificate, certificate not expired) with one-line SettingsErrors naming the
variable. `reload()` (SIGHUP) re-reads them; the new pair and CA are used from the next
handshake on, so a rotated certificate needs no restart; a bad set of files on reload
leaves the current one in force.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..settings import SettingsError
from ..settings.access import TlsSettings
from ..settings.file_modes import require_not_writable_by_others

log = logging.getLogger("avatarsigner.tls")


@dataclass(frozen=True)
class _Files:
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None


def _read(name: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise SettingsError(name, f"cannot read {path}: {error.strerror}") from None


def _certificates(name: str, path: str, data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SettingsError(name, f"{path} holds no PEM certificate") from None


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load(settings: TlsSettings, now: datetime | None = None) -> _Files:
    """Read and check the PEM files; SettingsError naming the variable at fault."""
    chain = _read("TLS_CERT_FILE", settings.cert_file)
    leaf = _certificates("TLS_CERT_FILE", settings.cert_file, chain)[0]
    if leaf.not_valid_after_utc <= (now or datetime.now(UTC)):
        raise SettingsError(
            "TLS_CERT_FILE", f"{settings.cert_file} expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    key_pem = _read("TLS_KEY_FILE", settings.key_file)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise SettingsError(
            "TLS_KEY_FILE", f"{settings.key_file} is not an unencrypted PEM private key"
        ) from None
    except Exception:  # noqa: BLE001 - e.g. UnsupportedAlgorithm; never echo key material
        raise SettingsError("TLS_KEY_FILE", f"{settings.key_file}: unsupported key") from None
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise SettingsError("TLS_KEY_FILE", "does not match the certificate in TLS_CERT_FILE")
    client_ca = None
    if settings.client_ca_file is not None:
        # Whoever can write the CA file can mint client certificates.
        require_not_writable_by_others("TLS_CLIENT_CA_FILE", settings.client_ca_file)
        client_ca = _read("TLS_CLIENT_CA_FILE", settings.client_ca_file)
        _certificates("TLS_CLIENT_CA_FILE", settings.client_ca_file, client_ca)
    return _Files(chain, key_pem, client_ca)


def _configuration(files: _Files) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(files.private_key, files.cert_chain)], root_certificates=files.client_ca
    )


class ServerTls:
    """The server's TLS credentials, re-read on reload() and picked up at the next handshake."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self.mutual = settings.client_ca_file is not None
        self._initial = load(settings)
        self._lock = threading.Lock()  # gRPC asks for the configuration from its own threads
        self._pending: _Files | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._initial),
            self._fetch,
            require_client_authentication=self.mutual,
        )

    def _fetch(self) -> Any:
        """Called by gRPC before handshakes: a new configuration once after reload, else None."""
        with self._lock:
            pending, self._pending = self._pending, None
        return None if pending is None else _configuration(pending)

    def reload(self) -> bool:
        try:
            files = load(self.settings)
        except SettingsError as error:
            log.error(
                "TLS files not reloaded; the current certificate stays in force",
                extra={"problem": str(error)},
            )
            return False
        with self._lock:
            self._pending = files
        log.info("TLS files reloaded")
        return True
