"""What every adapter needs: its target and how to reach it (TLS, a token), clients kept per target and settings
(and per event loop), and samples built from the shapes frameworks hand over (plain strings, or chat messages whose
content may be a list of text parts).

TLS and tokens: every adapter takes ``tls_ca``, ``tls_cert``, ``tls_key``, ``tls_server_name`` and ``token_file``
(``ClientSecurity``), each else from $REWARDLINE_TLS_CA, $REWARDLINE_TLS_CERT, $REWARDLINE_TLS_KEY,
$REWARDLINE_TLS_SERVER_NAME, $REWARDLINE_TOKEN_FILE, as the target comes from $REWARDLINE_TARGET: some frameworks
load an adapter by file path and pass it nothing (OpenRLHF).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from rewardline.services.api import pb
from rewardline.services.client import AsyncRewardClient, ChannelSettings, RewardClient
from rewardline.services.config import ClientSecurity

TARGET_ENV = "REWARDLINE_TARGET"
SECURITY_ENV = {
    "tls_ca": "REWARDLINE_TLS_CA",
    "tls_cert": "REWARDLINE_TLS_CERT",
    "tls_key": "REWARDLINE_TLS_KEY",
    "tls_server_name": "REWARDLINE_TLS_SERVER_NAME",
    "token_file": "REWARDLINE_TOKEN_FILE",
}
DEFAULT_TIMEOUT_S = 120.0

ClientKey = tuple[str, float | None, ChannelSettings]
_lock = threading.Lock()
_sync_clients: dict[ClientKey, RewardClient] = {}
# grpc.aio channels belong to the loop they were made in: one client per target per live loop.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ClientKey, AsyncRewardClient]]
_async_clients = weakref.WeakKeyDictionary()


def resolve_target(target: str | None) -> str:
    """``target``, else $REWARDLINE_TARGET; a ValueError saying how to give one."""
    resolved = target or os.environ.get(TARGET_ENV)
    if not resolved:
        raise ValueError(f"no rewardline target: pass target='host:port' or set ${TARGET_ENV}")
    return resolved


def resolve_settings(
    tls_ca: str | os.PathLike | None = None,
    tls_cert: str | os.PathLike | None = None,
    tls_key: str | os.PathLike | None = None,
    token_file: str | os.PathLike | None = None,
    tls_server_name: str | None = None,
) -> ChannelSettings:
    """The channel settings of an adapter: each argument, else its environment variable (SECURITY_ENV); plaintext
    and no token when neither is given. ValueError (pydantic's) for a certificate without its key."""
    given = {
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "token_file": token_file,
        "tls_server_name": tls_server_name,
    }
    values = {k: v if v is not None else os.environ.get(SECURITY_ENV[k]) or None for k, v in given.items()}
    return ClientSecurity.model_validate({k: v for k, v in values.items() if v is not None}).channel_settings()


def sync_client(
    target: str, timeout: float | None = DEFAULT_TIMEOUT_S, settings: ChannelSettings | None = None
) -> RewardClient:
    """One blocking client per target and settings for the whole process (gRPC channels are thread-safe)."""
    key = (target, timeout, settings or ChannelSettings())
    with _lock:
        client = _sync_clients.get(key)
        if client is None:
            client = _sync_clients[key] = RewardClient(target, timeout=timeout, settings=key[2])
        return client


def async_client(
    target: str, timeout: float | None = DEFAULT_TIMEOUT_S, settings: ChannelSettings | None = None
) -> AsyncRewardClient:
    """One asyncio client per target and settings in the running event loop."""
    loop = asyncio.get_running_loop()
    clients = _async_clients.setdefault(loop, {})
    key = (target, timeout, settings or ChannelSettings())
    client = clients.get(key)
    if client is None:
        client = clients[key] = AsyncRewardClient(target, timeout=timeout, settings=key[2])
    return client


def text_of(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    raise TypeError(f"message content must be a string or a list of content parts, got {type(content).__name__}")


def as_list(value: Any) -> Any:
    """numpy arrays (what parquet columns of lists become) as Python lists; anything else as it is."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, str | bytes) else value


def to_messages(turns: Sequence[Mapping[str, Any]]) -> list[pb.Message]:
    return [pb.Message(role=str(t["role"]), content=text_of(t.get("content"))) for t in as_list(turns)]


def make_sample(sample_id: str, prompt: Any, completion: Any, reference: Any = None) -> pb.Sample:
    """A Sample from a prompt and a completion, each a string or a list of chat messages.

    Two strings stay prompt/response (the service renders them with its own chat template); when either is a
    conversation, the sample is the messages, a string prompt becoming the user's turn and a string completion
    the assistant's."""
    prompt, completion = as_list(prompt), as_list(completion)
    ref = "" if reference is None else reference if isinstance(reference, str) else str(as_list(reference))
    if isinstance(prompt, str) and isinstance(completion, str):
        return pb.Sample(id=sample_id, prompt=prompt, response=completion, reference=ref)
    head = [pb.Message(role="user", content=prompt)] if isinstance(prompt, str) else to_messages(prompt)
    tail = (
        [pb.Message(role="assistant", content=completion)] if isinstance(completion, str) else to_messages(completion)
    )
    return pb.Sample(id=sample_id, messages=[*head, *tail], reference=ref)
