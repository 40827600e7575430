"""Starting and stopping service processes: used by the demo, the benchmarks and the tests alike.

A service is started exactly as a user starts it (``rewardline serve ...`` in its own process) and is
considered up when its standard health service answers SERVING.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rewardline.services.tls import ClientTLS

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PICKED_PORT = 10000
MIN_PICKED_PORTS = 1000  # fewer ports than this below the ephemeral range: port 0's choice, as before
_picked: set[int] = set()


def ephemeral_port_start() -> int | None:
    """The first port of the kernel's ephemeral range (Linux), or None where it cannot be read."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    """A loopback port that nothing is bound to, for a child process to listen on.

    Picked below the kernel's ephemeral range where there is room, not by binding port 0: port 0's choice comes
    from that range, the one outgoing connections take their source ports from, and in the seconds between the
    choice and the child's bind (its imports) any client connecting anywhere on the machine could take the port (a
    fresh-clone CI run lost a service to "Address already in use" that way). Ports below the range are only ever
    taken by a bind, and this process never hands out the same one twice."""
    start = ephemeral_port_start()
    if start is not None and start - LOWEST_PICKED_PORT >= MIN_PICKED_PORTS:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(LOWEST_PICKED_PORT, start)
            if port in _picked:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _picked.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(
    target: str,
    timeout: float,
    process: subprocess.Popen | None = None,
    service: str = "",
    tls: ClientTLS | None = None,
) -> None:
    """Returns once ``target``'s health says SERVING (over TLS with ``tls``); raises if the process dies or time
    runs out."""
    from rewardline.services.client import ChannelSettings, open_channel

    deadline = time.monotonic() + timeout
    # pick_first: this asks the health service itself, so the channel must not run round_robin's client-side health
    # check, which asks for the reward service's name: a trainer's control API serves only its own and would never
    # be reached.
    settings = ChannelSettings(retry=None, tls=tls, load_balancing="pick_first")
    with open_channel(target, settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the service at {target} exited with code {process.returncode} before serving")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"the service at {target} was not SERVING after {timeout:.0f}s")


def _die_with_parent() -> None:
    """Child-side: the child gets SIGTERM if the thread that started it ends (Linux), so none is orphaned.

    The kernel ties PR_SET_PDEATHSIG to the spawning *thread*, not its process: a child spawned from a worker
    thread would be stopped as soon as that thread exits. ``ChildProcess.spawn`` therefore asks for it only on
    the main thread, and ``start_all`` spawns on the caller's thread and only waits on workers."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ChildProcess:
    """A server run as a child process: spawned in its own session, waited for until ready, stopped with
    SIGTERM (so it drains) and killed only if it does not stop. Subclasses say what to run and when it is ready."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log_file: BinaryIO | None = None
        self._stderr: BinaryIO | None = None  # kept when no log is asked for, so that a child dying at start says why

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    def spawn(self, foreground: bool = False) -> subprocess.Popen:
        """Starts the child; in the foreground it shares our terminal, otherwise it logs to ``log_path``."""
        output: int | BinaryIO | None = None
        errors: int | BinaryIO | None = None
        if not foreground:
            if self.log_path is not None:
                output = errors = self._log_file = open(self.log_path, "ab")
            else:
                self._stderr = tempfile.TemporaryFile()
                output, errors = subprocess.DEVNULL, self._stderr
        on_main_thread = threading.current_thread() is threading.main_thread()
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=output,
            stderr=errors,
            start_new_session=True,
            preexec_fn=_die_with_parent if on_main_thread else None,
        )
        return self.process

    def start(self, timeout: float = 180.0) -> Self:
        self.spawn()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the drain; returns the exit code."""
        try:
            if self.process is None or self.process.poll() is not None:
                return self.process.returncode if self.process else 0
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        finally:
            if self._log_file:
                self._log_file.close()
                self._log_file = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output_tail(self, chars: int = 3000) -> str:
        """The end of what the child wrote to stderr (its log file when it has one)."""
        try:
            if self._stderr is not None:
                self._stderr.seek(0)
                data = self._stderr.read()
            elif self.log_path is not None:
                data = self.log_path.read_bytes()
            else:
                return ""
        except (OSError, ValueError):
            return ""
        return data[-chars:].decode("utf-8", "replace")

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()


class ServiceProcess(ChildProcess):
    """``rewardline serve KIND ...`` as a child process on a loopback port."""

    def __init__(
        self,
        kind: str,
        args: Sequence[str],
        port: int | None = None,
        metrics_port: int | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        threads: int | None = 1,
        http_port: int | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        super().__init__(log_path)
        self.kind = kind
        self.port = port or free_port()
        self.metrics_port = metrics_port if metrics_port is not None else free_port()
        self.http_port = http_port  # the HTTP face's port (``free_port()`` for any); None: no HTTP face
        self.tls = tls  # how to reach a service started with --tls-cert (waiting for it, http_url's scheme)
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        if threads is not None:
            self.env.setdefault("OMP_NUM_THREADS", str(threads))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The HTTP face's base URL (``http://127.0.0.1:PORT``, https with ``tls``)."""
        if self.http_port is None:
            raise ValueError("this service was started without an HTTP face (http_port)")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rewardline.services",
            "serve",
            self.kind,
            *self.args,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            *(["--http-port", str(self.http_port)] if self.http_port is not None else []),
        ]

    def environment(self) -> dict[str, str]:
        return self.env

    def wait_ready(self, timeout: float) -> None:
        try:
            wait_serving(self.target, timeout, self.process, tls=self.tls)
        except RuntimeError as e:  # it died before serving: say why, from what it wrote
            raise RuntimeError(f"{e}; the end of its output:\n{self.output_tail()}") from None


C = TypeVar("C", bound=ChildProcess)


def start_all(children: Iterable[C], timeout: float = 180.0) -> list[C]:
    """Starts several children at once, all or none: spawned one after another on this thread (a spawn takes
    milliseconds, and each child then dies with this thread's process, see ``_die_with_parent``), then waited
    for side by side, so their model loading overlaps."""
    children = list(children)
    try:
        for child in children:
            child.spawn()
        with ThreadPoolExecutor(max(len(children), 1)) as pool:
            for waited in [pool.submit(child.wait_ready, timeout) for child in children]:
                waited.result()
    except BaseException:
        for child in children:
            child.kill()
        raise
    return children
