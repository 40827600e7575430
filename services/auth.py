"""Scoped bearer tokens: who may call what, on every surface (gRPC services, their HTTP face, the trainer's API).

A token file (``--auth-tokens FILE``) lists the tokens a server accepts, never the tokens themselves::

    - {name: trainer-a, sha256: 9f86d0...15d, scopes: [score]}
    - {name: ops, sha256: 60303a...e0c, scopes: [score, admin]}

``sha256`` is the hex SHA-256 of the token; ``name`` is what metrics and logs show (a token never appears in
either). A caller sends ``authorization: Bearer TOKEN`` (gRPC metadata or the HTTP header). The file is read
again when it changes (checked at most once a second, on the request path: one ``stat``), so revoking a token is
an edit, not a restart; a file that stops parsing keeps the last good list in force and says so in the log.

Scopes: ``score`` (Score, ScoreStream, Compare, GetInfo and the HTTP routes that score) and ``admin`` (the
trainer's Pause, Resume, Checkpoint). The trainer's Status and server reflection need any valid token. The
standard health service stays open, so load balancers and kubelet probes need no token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

log = logging.getLogger(__name__)

Scope = Literal["score", "admin"]
ANY_TOKEN: frozenset[str] = frozenset({"score", "admin"})  # any valid token, whatever its scopes
OPEN = None  # no token needed
RELOAD_CHECK_S = 1.0

# gRPC full method name prefix -> the scopes of which one is needed (None: open).
_SERVICE_POLICY: dict[str, frozenset[str] | None] = {
    "/grpc.health.v1.Health/": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/": ANY_TOKEN,
    "/grpc.reflection.v1.ServerReflection/": ANY_TOKEN,
    "/rewardline.v1.RewardService/": frozenset({"score"}),
    "/rewardline.v1.TrainerService/Status": ANY_TOKEN,
    "/rewardline.v1.TrainerService/": frozenset({"admin"}),
}


def required_scopes(method: str) -> frozenset[str] | None:
    """The scopes one of which a call of ``method`` needs; None when it is open. Unknown methods need admin."""
    for prefix, scopes in _SERVICE_POLICY.items():
        if method.startswith(prefix):
            return scopes
    return frozenset({"admin"})


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, pattern=r"^[\w.@:-]+$", description="shown in metrics and logs")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the token")
    scopes: tuple[Scope, ...] = Field(..., min_length=1)


_ENTRIES = TypeAdapter(list[TokenEntry])


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AuthError(Exception):
    """A call without a usable token (UNAUTHENTICATED) or with one that lacks the scope (PERMISSION_DENIED)."""

    def __init__(self, code: grpc.StatusCode, message: str, token: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.token = token  # the name of a known token that lacked the scope, else ""


def read_tokens(path: Path) -> list[TokenEntry]:
    """The entries of a token file; ValueError naming what is wrong (names must be unique)."""
    try:
        entries = _ENTRIES.validate_python(yaml.safe_load(Path(path).read_text()) or [])
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read the token file {path}: {e}") from None
    except ValidationError as e:
        raise ValueError(f"token file {path}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"token file {path}: token names must be unique")
    return entries


class TokenStore:
    """The tokens in force, re-read when their file changes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries = read_tokens(self.path)
        self._stamp = self._file_stamp()
        self._checked = clock()

    def _file_stamp(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            self._checked = now
            try:
                stamp = self._file_stamp()
            except OSError as e:
                log.error("token file unreadable; keeping the tokens in force", extra={"error": str(e)})
                return
            if stamp == self._stamp:
                return
            try:
                self._entries = read_tokens(self.path)
                log.warning("token file reloaded", extra={"path": str(self.path), "tokens": len(self._entries)})
            except ValueError as e:
                log.error("token file changed but does not parse; keeping the tokens in force", extra={"error": str(e)})
            self._stamp = stamp

    def check(self, authorization: str | None, needed: frozenset[str] | None) -> str:
        """The name of the token that may make this call (``""`` for an open one); AuthError otherwise."""
        if needed is None:
            return ""
        if not authorization:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token (authorization: Bearer TOKEN)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "the authorization header must be 'Bearer TOKEN'")
        self._refresh()
        presented = token_sha256(token.strip())
        found: TokenEntry | None = None
        for entry in self._entries:  # every entry compared, in constant time each
            if hmac.compare_digest(entry.sha256, presented):
                found = entry
        if found is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
        if needed.isdisjoint(found.scopes):
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {found.name!r} lacks the scope this call needs ({' or '.join(sorted(needed))})",
                token=found.name,
            )
        return found.name


Observer = Callable[[str, grpc.StatusCode], None]  # (token name or "", outcome code) for metrics


def _metadata_value(metadata: Sequence[tuple[str, Any]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def _refusal(handler: grpc.RpcMethodHandler, error: AuthError, asynchronous: bool) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind that ends the call with the refusal, before reading anything."""

    async def refuse_async(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(error.code, error.message)

    def refuse(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(error.code, error.message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse_async if asynchronous else refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthInterceptor(grpc.ServerInterceptor):
    """Token checks for a threaded grpc.server (the trainer's control API)."""

    def __init__(self, store: TokenStore, observe: Observer | None = None) -> None:
        self.store = store
        self.observe = observe

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        needed = required_scopes(method)
        if handler is None or needed is None:
            return handler
        header = _metadata_value(handler_call_details.invocation_metadata, "authorization")
        try:
            name = self.store.check(header, needed)
        except AuthError as e:
            note_outcome(self.observe, e.token, e.code, method)
            return _refusal(handler, e, asynchronous=False)
        note_outcome(self.observe, name, grpc.StatusCode.OK, method)
        return handler


class AsyncAuthInterceptor(grpc.aio.ServerInterceptor):
    """Token checks for a grpc.aio server (the reward services)."""

    def __init__(self, store: TokenStore, observe: Observer | None = None) -> None:
        self.store = store
        self.observe = observe

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        needed = required_scopes(method)
        if handler is None or needed is None:
            return handler
        header = _metadata_value(handler_call_details.invocation_metadata, "authorization")
        try:
            name = self.store.check(header, needed)
        except AuthError as e:
            note_outcome(self.observe, e.token, e.code, method)
            return _refusal(handler, e, asynchronous=True)
        note_outcome(self.observe, name, grpc.StatusCode.OK, method)
        return handler


def note_outcome(observe: Observer | None, token: str, code: grpc.StatusCode, method: str) -> None:
    """A check's outcome: a refusal logged (with the token's name at most), and every outcome to the observer."""
    if code is not grpc.StatusCode.OK:
        # the token's name at most (a known token lacking a scope); never the token
        log.warning("call refused", extra={"method": method, "code": code.name, "token_name": token or None})
    if observe is not None:
        observe(token, code)


@dataclass(frozen=True)
class BearerToken:
    """A client's token, read from a file (a mounted Secret) so it never sits in a config or a command line."""

    path: Path

    def header(self) -> str:
        token = Path(self.path).read_text().strip()
        if not token:
            raise ValueError(f"the token file {self.path} is empty")
        return f"Bearer {token}"

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", self.header())]


def bearer_metadata(token_file: Path | None) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying the token in ``token_file`` (none without one)."""
    return tuple(BearerToken(token_file).metadata()) if token_file is not None else ()


def hashed_entries(tokens: Iterable[tuple[str, str, Sequence[str]]]) -> list[dict[str, Any]]:
    """Token-file entries for (name, token, scopes): what an operator writes after generating tokens."""
    return [{"name": n, "sha256": token_sha256(t), "scopes": list(s)} for n, t, s in tokens]
