"""Threads that compute (forward passes, tokenizing large requests) yield the CPU to the thread that answers.

On a CPU-bound service the forward pass and the tokenizer take every core they are given, and the event loop that
admits, refuses and answers small requests waited its turn behind them: with the backend saturated on two cores a
RESOURCE_EXHAUSTED took 24 ms at p99, when its point is to tell a client at once to go elsewhere. A compute thread
therefore lowers its own scheduling priority (``nice``) when it starts. On Linux the nice value is a thread's own
and is inherited by the threads it creates, so the OpenMP team a forward thread starts at its first parallel region
runs at the same lower priority. The loop then runs as soon as it has work, and the compute threads still get every
cycle it leaves idle: on an otherwise idle machine throughput is unchanged (nice only weighs threads that compete).

Lowering is one-way for an unprivileged process (raising a thread back needs CAP_SYS_NICE), which is why only
threads that do nothing but compute are lowered. Elsewhere than Linux, ``setpriority`` on a thread id would renice
the whole process, so nothing is done there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

_nice = 0


def set_compute_nice(nice: int) -> None:
    """The nice value compute threads started from now on take (0: left alone); set once, before loading."""
    global _nice
    _nice = nice


def lower_this_thread() -> None:
    """Called first thing on a compute thread (a ``ThreadPoolExecutor`` initializer)."""
    if _nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), _nice))
    except OSError as e:  # a sandbox that forbids it: compute at the loop's priority, as before
        log.warning("cannot lower a compute thread's priority", extra={"error": str(e)})


def start_compute_thread(torch_threads: int) -> None:
    """Initializer of a forward-pass thread: lower it, then give it the process's torch threads.

    The order matters: the OpenMP team is created at the thread's first parallel region and inherits its priority.
    The thread count is carried over because a new thread's OpenMP team follows OMP_NUM_THREADS, not the main
    thread's ``torch.set_num_threads``."""
    import torch

    lower_this_thread()
    torch.set_num_threads(torch_threads)
