"""Tokens and TLS as building blocks: the token file's rules, the interceptors on a real gRPC server, and
certificates that rotate under a running server. (The services and the trainer wired with them are tested
end to end in test_security_services.py.)"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import time
from pathlib import Path

import grpc
import pytest
import yaml
from certs import CertificateAuthority, Issued
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from rewardline.services import auth
from rewardline.services.auth import AsyncAuthInterceptor, AuthError, TokenStore, hashed_entries, required_scopes
from rewardline.services.tls import ReloadingSSLContext, ServerTLS, check_server_files, grpc_server_credentials

SCORER, OPS = "s3cr3t-scorer", "s3cr3t-ops"


def token_file(path: Path, entries=(("scorer", SCORER, ["score"]), ("ops", OPS, ["score", "admin"]))) -> Path:
    path.write_text(yaml.safe_dump(hashed_entries(entries)))
    return path


def test_scopes_of_every_method():
    assert required_scopes("/grpc.health.v1.Health/Check") is None
    assert required_scopes("/rewardline.v1.RewardService/Score") == {"score"}
    assert required_scopes("/rewardline.v1.RewardService/ScoreStream") == {"score"}
    assert required_scopes("/rewardline.v1.TrainerService/Pause") == {"admin"}
    assert required_scopes("/rewardline.v1.TrainerService/Status") == auth.ANY_TOKEN
    assert required_scopes("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == auth.ANY_TOKEN
    assert required_scopes("/some.Other/Thing") == {"admin"}  # unknown: closed by default


def test_a_token_is_checked_by_its_hash_and_its_scope(tmp_path):
    store = TokenStore(token_file(tmp_path / "tokens.yaml"))
    assert store.check(f"Bearer {SCORER}", frozenset({"score"})) == "scorer"
    assert store.check(f"bearer {OPS}", frozenset({"admin"})) == "ops"
    assert store.check(None, None) == ""  # an open method needs nothing
    cases = {
        None: grpc.StatusCode.UNAUTHENTICATED,
        "": grpc.StatusCode.UNAUTHENTICATED,
        SCORER: grpc.StatusCode.UNAUTHENTICATED,  # no scheme
        "Basic dXNlcjpwYXNz": grpc.StatusCode.UNAUTHENTICATED,
        "Bearer wrong": grpc.StatusCode.UNAUTHENTICATED,
        f"Bearer {SCORER}x": grpc.StatusCode.UNAUTHENTICATED,
    }
    for header, code in cases.items():
        with pytest.raises(AuthError) as e:
            store.check(header, frozenset({"score"}))
        assert e.value.code == code and SCORER not in e.value.message
    with pytest.raises(AuthError) as e:
        store.check(f"Bearer {SCORER}", frozenset({"admin"}))
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED and e.value.token == "scorer"


def test_the_file_never_holds_a_token_and_is_validated(tmp_path):
    path = token_file(tmp_path / "tokens.yaml")
    assert SCORER not in path.read_text() and OPS not in path.read_text()
    bad = {
        "not hex": [{"name": "a", "sha256": "xyz", "scopes": ["score"]}],
        "unknown scope": [{"name": "a", "sha256": "0" * 64, "scopes": ["root"]}],
        "no scopes": [{"name": "a", "sha256": "0" * 64, "scopes": []}],
        "extra key (a token in clear)": [{"name": "a", "sha256": "0" * 64, "scopes": ["score"], "token": "x"}],
        "duplicate names": [{"name": "a", "sha256": "0" * 64, "scopes": ["score"]}] * 2,
    }
    for case, entries in bad.items():
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(entries))
        with pytest.raises(ValueError):
            TokenStore(tmp_path / "bad.yaml")
        assert case


def test_a_revoked_token_stops_working_without_a_restart(tmp_path):
    now = [0.0]
    path = token_file(tmp_path / "tokens.yaml")
    store = TokenStore(path, clock=lambda: now[0])
    assert store.check(f"Bearer {SCORER}", frozenset({"score"})) == "scorer"
    token_file(path, entries=(("ops", OPS, ["score", "admin"]),))  # scorer revoked
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    now[0] += 2.0
    with pytest.raises(AuthError):
        store.check(f"Bearer {SCORER}", frozenset({"score"}))
    path.write_text("- {name: [broken")  # a bad edit keeps the last good list
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    now[0] += 2.0
    assert store.check(f"Bearer {OPS}", frozenset({"admin"})) == "ops"


def serve(interceptors=(), credentials=None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=list(interceptors))
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection((health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    return server, port


def test_the_interceptor_leaves_health_open_and_guards_the_rest(tmp_path):
    store = TokenStore(token_file(tmp_path / "tokens.yaml"))
    seen: list[tuple[str, str]] = []

    async def main():
        server, port = serve([AsyncAuthInterceptor(store, lambda name, code: seen.append((name, code.name)))])
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING  # no token needed

                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                request = reflection_pb2.ServerReflectionRequest(list_services="")

                async def list_services(metadata=()):
                    call = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10)
                    return [r async for r in call]

                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await list_services()
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await list_services((("authorization", "Bearer nope"),))
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "nope" not in e.value.details()
                (found,) = await list_services((("authorization", f"Bearer {SCORER}"),))
                assert health.SERVICE_NAME in {s.name for s in found.list_services_response.service}
        finally:
            await server.stop(0)

    asyncio.run(main())
    assert ("", "UNAUTHENTICATED") in seen and ("scorer", "OK") in seen


def peer_certificate(port: int, ca: Path) -> bytes:
    """The certificate a new TLS handshake gets from the server (h2, as gRPC clients offer)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_rotated_certificate_is_served_to_new_connections_without_a_restart(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "ca")
    first = ca.issue(tmp_path / "first", "localhost")
    second = ca.issue(tmp_path / "second", "localhost")
    live = ServerTLS(cert=tmp_path / "tls.crt", key=tmp_path / "tls.key")
    shutil.copy(first.cert, live.cert)
    shutil.copy(first.key, live.key)

    async def main():
        server, port = serve(credentials=grpc_server_credentials(live))
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            before = await loop.run_in_executor(None, peer_certificate, port, ca.path)
            assert ssl.DER_cert_to_PEM_cert(before).strip() == first.cert.read_text().strip()
            shutil.copy(second.cert, live.cert)  # rewritten in place, caught half-way: the old pair stays in force
            during = await loop.run_in_executor(None, peer_certificate, port, ca.path)
            assert ssl.DER_cert_to_PEM_cert(during).strip() == first.cert.read_text().strip()
            shutil.copy(second.key, live.key)
            after = await loop.run_in_executor(None, peer_certificate, port, ca.path)
            assert ssl.DER_cert_to_PEM_cert(after).strip() == second.cert.read_text().strip()
            creds = grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes())
            async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_server_files_are_checked_at_start(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "ca")
    leaf = ca.issue(tmp_path, "localhost")
    other = ca.issue(tmp_path / "other", "localhost")
    check_server_files(ServerTLS(leaf.cert, leaf.key, ca.path))
    with pytest.raises(ValueError, match="tls_cert: no such file"):
        check_server_files(ServerTLS(tmp_path / "missing.crt", leaf.key))
    (tmp_path / "der.crt").write_bytes(b"\x30\x82 not PEM")
    with pytest.raises(ValueError, match="not a PEM"):
        check_server_files(ServerTLS(tmp_path / "der.crt", leaf.key))
    with pytest.raises(ValueError, match="do not load"):
        check_server_files(ServerTLS(leaf.cert, other.key))  # a key of another certificate


def https_handshake(port: int, ca: Path, client: Issued | None = None) -> bytes:
    """The certificate a new TLS handshake gets from an HTTP server (HTTP/1.1), with a client certificate or none;
    raises ssl.SSLError (or ConnectionError) when the server refuses the handshake."""
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            der = conn.getpeercert(binary_form=True)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            if not conn.recv(64):  # TLS 1.3: a refused client certificate shows as a closed connection here
                raise ConnectionError("the server closed the connection after the handshake")
    assert der is not None
    return der


def test_the_http_context_follows_its_files_and_a_removed_client_ca_stops_being_trusted(tmp_path):
    """ReloadingSSLContext: a new certificate for new handshakes, and a client CA replaced in the file replaces
    the trust (loading into the old context would only add to it)."""
    old_ca, new_ca = (
        CertificateAuthority.create(tmp_path / "old"),
        CertificateAuthority.create(tmp_path / "new", "new CA"),
    )
    first, second = old_ca.issue(tmp_path / "first", "localhost"), new_ca.issue(tmp_path / "second", "localhost")
    old_client = old_ca.issue(tmp_path / "oc", "old client", server=False)
    new_client = new_ca.issue(tmp_path / "nc", "new client", server=False)
    live = ServerTLS(cert=tmp_path / "tls.crt", key=tmp_path / "tls.key", client_ca=tmp_path / "ca.crt")
    for source, target in ((first.cert, live.cert), (first.key, live.key), (old_ca.path, live.client_ca)):
        shutil.copy(source, target)
    both = tmp_path / "both.pem"
    both.write_bytes(old_ca.path.read_bytes() + new_ca.path.read_bytes())
    reloading = ReloadingSSLContext(live)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=reloading.context)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()

        async def handshake(client):
            return await loop.run_in_executor(None, https_handshake, port, both, client)

        try:
            assert ssl.DER_cert_to_PEM_cert(await handshake(old_client)).strip() == first.cert.read_text().strip()
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await handshake(None)  # mutual TLS: no client certificate, no connection
            assert not reloading.maybe_reload()  # nothing changed
            shutil.copy(second.cert, live.cert)  # half-way through a rotation: the new certificate, the old key
            assert not reloading.maybe_reload()
            shutil.copy(second.key, live.key)
            shutil.copy(new_ca.path, live.client_ca)
            assert reloading.maybe_reload()
            assert ssl.DER_cert_to_PEM_cert(await handshake(new_client)).strip() == second.cert.read_text().strip()
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await handshake(old_client)  # its CA left the file
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
