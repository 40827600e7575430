"""TLS and mutual TLS for every surface, with certificates that rotate without a restart.

Servers take ``--tls-cert FILE --tls-key FILE`` (PEM) and, for mutual TLS, ``--tls-client-ca FILE``: then a client
must present a certificate signed by that CA. cert-manager (and most operators) rewrite the files in place when a
certificate is renewed, so the files are watched:

- gRPC: gRPC's own dynamic credentials (``grpc.dynamic_ssl_server_credentials``) ask for the configuration at every
  new handshake; the fetcher answers with a fresh one when a file changed, else keeps the current one.
- HTTP (the services' HTTP face): the listening ``ssl.SSLContext`` hands every new handshake (through its SNI
  callback, which OpenSSL calls with or without SNI) to the newest context built from the files, checked on a
  timer; open connections keep theirs. A whole new context, not the old one loaded again: loading a client CA into
  an existing context adds to its trust store, so a CA removed from the file would stay trusted until a restart.

Files are read as a pair: a certificate is taken only with the key that matches it, so a rotation caught half-way
(the new certificate beside the old key) keeps the old pair in force until the key arrives.

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

    def forget(self) -> None:
        """The next look reports a change (files that did not load yet are tried again)."""
        self._stamps = []


def _files(tls: ServerTLS) -> list[Path]:
    return [tls.cert, tls.key, *([tls.client_ca] if tls.client_ca else [])]


def _read_pem(tls: ServerTLS) -> tuple[bytes, bytes, bytes | None]:
    cert, key = tls.cert.read_bytes(), tls.key.read_bytes()
    ca = tls.client_ca.read_bytes() if tls.client_ca else None
    for name, data in (("tls_cert", cert), ("tls_key", key), ("tls_client_ca", ca)):
        if data is not None and b"-----BEGIN" not in data:
            raise ValueError(f"{name}: not a PEM file")
    return cert, key, ca


def server_ssl_context(tls: ServerTLS) -> ssl.SSLContext:
    """A server context from the files as they are now (TLS 1.2 at least; client certificates required with a
    client CA); ValueError when they do not load together."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca:
            context.load_verify_locations(tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"tls_cert/tls_key/tls_client_ca do not load: {e}") from None
    return context


def check_server_files(tls: ServerTLS) -> None:
    """ValueError naming the flag whose file is missing, not PEM, or does not pair with the key; checked at
    start, so a misconfigured server exits with the reason instead of failing every handshake."""
    for name, path in (("tls_cert", tls.cert), ("tls_key", tls.key), ("tls_client_ca", tls.client_ca)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{name}: no such file: {path}")
    _read_pem(tls)
    server_ssl_context(tls)


def grpc_server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port`` that follow the files as they are rewritten."""
    check_server_files(tls)
    watch = FileWatch(_files(tls))
    lock = threading.Lock()

    def configuration() -> grpc.ServerCertificateConfiguration:
        cert, key, ca = _read_pem(tls)
        server_ssl_context(tls)  # the pair matches (gRPC would take a mismatched one and fail every handshake)
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
                watch.forget()
                return None
            log.warning("TLS certificate reloaded", extra={"cert": str(tls.cert)})
            return fresh

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=tls.client_ca is not None
    )


class ReloadingSSLContext:
    """The ``ssl.SSLContext`` of an HTTP server (``context``, given to the server once) whose certificate and client
    CA follow their files: ``maybe_reload`` (called on a timer by the server) builds a fresh context when a file
    changed, and the listening context's SNI callback hands each new handshake to the newest one."""

    def __init__(self, tls: ServerTLS) -> None:
        check_server_files(tls)
        self.tls = tls
        self.context = server_ssl_context(tls)
        self._current = self.context
        self._watch = FileWatch(_files(tls))
        self.context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject, server_name: str | None, listening: ssl.SSLContext) -> None:
        current = self._current
        if current is not listening:
            connection.context = current

    def maybe_reload(self) -> bool:
        if not self._watch.changed():
            return False
        try:
            _read_pem(self.tls)
            fresh = server_ssl_context(self.tls)
        except (OSError, ValueError) as e:
            log.warning("TLS files changed but do not load yet", extra={"error": str(e)})
            self._watch.forget()
            return False
        self._current = fresh
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
