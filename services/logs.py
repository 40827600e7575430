"""Structured, quiet-by-default logging: JSON lines on stderr, WARNING unless asked for more.

Extra fields passed with ``extra={...}`` become JSON keys, so log lines can be filtered by ``method``,
``sample_id`` and so on without parsing free text.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

_NOISY = ("urllib3", "filelock", "httpx", "asyncio", "vllm", "transformers")


def setup_logging(level: str = "warning") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "asctime": "time"}
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    if root.level > logging.INFO:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
