"""The services' health-only port in a process of its own.

Why a process: while gRPC receives a large request and protobuf parses it, the services' event loop holds the GIL
(tens of milliseconds per 15 MB message), and threads of the same process answering probes waited behind it: p99
45-93 ms beside four 15 MB requests, against an aim of 50. A child interpreter has a GIL of its own, so a probe is
answered whatever the service is doing.

The service writes every status change to the child's standard input, a line each (``<service name> <status>``,
``start`` once the statuses before serving are set, ``shutdown`` when the drain begins), and closes it to stop the
child, which also happens when the service dies however it dies: the child never outlives it. The child ignores
SIGINT and SIGTERM (a Ctrl-C reaches the whole process group) so that probes see NOT_SERVING through the service's
drain, as on its main port, and not a refused connection. What it does not tell, like the threaded port it
replaces: whether the service's event loop still turns; a backend or model that goes away turns it NOT_SERVING
through the service, as before.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc

log = logging.getLogger(__name__)

START = "start"
SHUTDOWN = "shutdown"  # every status NOT_SERVING from now on, as grpc_health's enter_graceful_shutdown


class HealthSidecar:
    """The parent's end: binds the port at once (an error here, not later), then relays ``set`` to the child."""

    def __init__(self, host: str, port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, host, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.isdigit():
            self.process.wait(timeout=10)
            code = self.process.returncode
            raise OSError(f"cannot listen on {host}:{port} (the health port's process exited {code})")
        self.port = int(line)
        self._broken = False

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):  # the child is gone: probes there fail, which is what they should see
            if not self._broken:
                log.error("the health port's process has exited", extra={"returncode": self.process.poll()})
            self._broken = True

    def set(self, service: str, status: int) -> None:
        self._send(f"{service} {status}")

    def start(self) -> HealthSidecar:
        self._send(START)
        return self

    def enter_graceful_shutdown(self) -> None:
        self._send(SHUTDOWN)

    def stop(self, grace: float | None = None) -> None:
        """Closes the pipe (the child stops serving at once) and waits for the child; ``grace`` is not used."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve(host: str, port: int) -> None:
    """The child: reports the bound port on standard output, serves from ``start`` on, ends at end of input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        sys.exit(1)
    print(bound, flush=True)
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line == START:
            server.start()
        elif line == SHUTDOWN:
            servicer.enter_graceful_shutdown()
        else:
            name, _, status = line.rpartition(" ")
            servicer.set(name, int(status))
    server.stop(0)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
