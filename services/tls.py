"""TLS and mutual TLS for every surface, with certificates that rotate without a restart.

Servers take ``--tls-cert FILE --tls-key FILE`` (PEM) and, for mutual TLS, ``--tls-client-ca FILE``: then a client
must present a certificate signed by that CA. cert-manager (and most operators) rewrite the files in place when a
certificate is renewed, so the files are watched:

- gRPC: gRPC's own dynamic credentials (``grpc.dynamic_ssl_server_credentials``) ask for the configuration at every
  new handshake; the fetcher answers with a fresh one when a file changed, else keeps the current one.
- HTTP (the services' HTTP face): one ``ssl.SSLContext`` whose chain is loaded again when a file changed, checked
  on a timer; new handshakes use the new chain, open connections keep theirs.

Clients (the Python client, ``rewardline score``/``info``, the trainer's reward sources and control client) take a
CA to trust (``tls_ca``) and, for mutual TLS, their own certificate and key.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTLS:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: client certificates signed by it are required (mutual TLS)


@dataclass(frozen=True)
class ClientTLS:
    ca: Path | None = None  # None: the system's trust store
    cert: Path | None = None  # with key: a client certificate (mutual TLS)
    key: Path | None = None
    server_name: str | None = None  # the name to check the server's certificate against (default: the target's)


class FileWatch:
    """Whether any of some files changed since the last look (modification time, size, inode)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._stamps = self._read()

    def _read(self) -> list[tuple[int, int, int] | None]:
        out: list[tuple[int, int, int] | None] = []
        for path in self.paths:
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return out

    def changed(self) -> bool:
        stamps = self._read()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        return True


def _files(tls: ServerTLS) -> list[Path]:
    return [tls.cert, tls.key, *([tls.client_ca] if tls.client_ca else [])]


def _read_pem(tls: ServerTLS) -> tuple[bytes, bytes, bytes | None]:
    cert, key = tls.cert.read_bytes(), tls.key.read_bytes()
    ca = tls.client_ca.read_bytes() if tls.client_ca else None
    for name, data in (("tls_cert", cert), ("tls_key", key), ("tls_client_ca", ca)):
        if data is not None and b"-----BEGIN" not in data:
            raise ValueError(f"{name}: not a PEM file")
    return cert, key, ca


def check_server_files(tls: ServerTLS) -> None:
    """ValueError naming the flag whose file is missing, not PEM, or does not pair with the key; checked at
    start, so a misconfigured server exits with the reason instead of failing every handshake."""
    for name, path in (("tls_cert", tls.cert), ("tls_key", tls.key), ("tls_client_ca", tls.client_ca)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{name}: no such file: {path}")
    _read_pem(tls)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca:
            context.load_verify_locations(tls.client_ca)
    except ssl.SSLError as e:
        raise ValueError(f"tls_cert/tls_key/tls_client_ca do not load: {e}") from None


def grpc_server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port`` that follow the files as they are rewritten."""
    check_server_files(tls)
    watch = FileWatch(_files(tls))
    lock = threading.Lock()

    def configuration() -> grpc.ServerCertificateConfiguration:
        cert, key, ca = _read_pem(tls)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's core before each handshake: None keeps the configuration in force.
        with lock:
            if not watch.changed():
                return None
            try:
                fresh = configuration()
            except (OSError, ValueError) as e:  # half-written during a rotation: the next handshake tries again
                log.warning("TLS files changed but do not load yet", extra={"error": str(e)})
                watch._stamps = []  # look again next time
                return None
            log.warning("TLS certificate reloaded", extra={"cert": str(tls.cert)})
            return fresh

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=tls.client_ca is not None
    )


class ReloadingSSLContext:
    """An ``ssl.SSLContext`` for an HTTP server whose chain is reloaded when its files change (``maybe_reload``,
    called on a timer by the server)."""

    def __init__(self, tls: ServerTLS) -> None:
        check_server_files(tls)
        self.tls = tls
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca:
            self.context.load_verify_locations(tls.client_ca)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self._watch = FileWatch(_files(tls))

    def maybe_reload(self) -> bool:
        if not self._watch.changed():
            return False
        try:
            self.context.load_cert_chain(self.tls.cert, self.tls.key)
            if self.tls.client_ca:
                self.context.load_verify_locations(self.tls.client_ca)
        except (OSError, ssl.SSLError) as e:
            log.warning("TLS files changed but do not load yet", extra={"error": str(e)})
            self._watch._stamps = []
            return False
        log.warning("TLS certificate reloaded", extra={"cert": str(self.tls.cert)})
        return True


def grpc_channel_credentials(tls: ClientTLS) -> grpc.ChannelCredentials:
    if (tls.cert is None) != (tls.key is None):
        raise ValueError("a client certificate needs both tls_cert and tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes() if tls.ca else None,
        private_key=tls.key.read_bytes() if tls.key else None,
        certificate_chain=tls.cert.read_bytes() if tls.cert else None,
    )


def client_ssl_context(tls: ClientTLS) -> ssl.SSLContext:
    """The same trust and client certificate for an HTTP client (the adapters' HTTPS calls)."""
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    if tls.cert and tls.key:
        context.load_cert_chain(tls.cert, tls.key)
    return context
