"""Prompts as a stream: JSONL files read in order with a cursor that a checkpoint saves and a resume restores.

The cursor is (epoch, file, byte offset of the next line): resuming seeks straight there, so the data order
of a resumed run is the uninterrupted run's, however large the files. A watched directory adds its ``*.jsonl``
files in name order as they appear (write them elsewhere and rename them in, so that no half-written file is
read; a line without its newline yet is left for later). A line that is not a JSON object with a prompt is
logged and skipped: one bad record never stops a run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rewardline.trainer.config import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # file:line, for logs and for checking data order


class Cursor(BaseModel):
    epoch: int = 0
    file: str = ""  # the file being read ("" before the first)
    offset: int = 0  # byte offset of the next line in it
    line: int = 0  # line number of the next line (for messages)


class NoMorePrompts(Exception):
    """Every file is read, the stream does not loop and there is no directory to wait on."""


class PromptStream:
    def __init__(
        self, config: DataConfig, cursor: Cursor | None = None, should_stop: Callable[[], bool] = lambda: False
    ) -> None:
        self.config = config
        self.cursor = cursor or Cursor()
        self.should_stop = should_stop
        self.skipped = 0
        self._read_this_epoch = 0

    def files(self) -> list[Path]:
        """The configured files, then the watched directory's, by name."""
        files = [Path(f) for f in self.config.train]
        if self.config.watch_dir is not None and self.config.watch_dir.is_dir():
            files += sorted(p for p in self.config.watch_dir.glob("*.jsonl") if p.is_file())
        return files

    def take(self, count: int) -> list[PromptRecord]:
        """The next ``count`` records, waiting for new files in the watched directory when needed."""
        out: list[PromptRecord] = []
        waited = False
        while len(out) < count:
            record = self._next()
            if record is not None:
                out.append(record)
                self._read_this_epoch += 1
                continue
            if self.config.loop and (self._read_this_epoch or self.cursor.offset):
                if not self._read_this_epoch and self.cursor.epoch > 0:
                    raise NoMorePrompts("a whole pass over the prompt files found no valid record")
                self.cursor = Cursor(epoch=self.cursor.epoch + 1)
                self._read_this_epoch = 0
                continue
            if self.config.watch_dir is None:
                raise NoMorePrompts(f"every prompt file was read ({len(self.files())} files) and data.loop is off")
            if self.should_stop():
                raise NoMorePrompts("stopped while waiting for prompt files")
            if not waited:
                log.warning("waiting for new prompt files", extra={"watch_dir": str(self.config.watch_dir)})
                waited = True
            time.sleep(self.config.poll_s)
        return out

    def _next(self) -> PromptRecord | None:
        """The record at the cursor, moving past it; None when there is nothing more to read now."""
        while True:
            names = [str(f) for f in self.files()]
            if not self.cursor.file:
                if not names:
                    return None
                self.cursor = Cursor(epoch=self.cursor.epoch, file=names[0])
            if self.cursor.file not in names:
                raise FileNotFoundError(f"prompt file {self.cursor.file} (where the data cursor points) is gone")
            path = Path(self.cursor.file)
            with open(path, "rb") as f:
                f.seek(self.cursor.offset)
                raw = f.readline()
            complete = raw.endswith(b"\n") or (
                raw and not self._is_watched(path)
            )  # a static file's last line needs no newline
            if complete:
                line = self.cursor.line + 1
                self.cursor = self.cursor.model_copy(update={"offset": self.cursor.offset + len(raw), "line": line})
                record = self._parse(raw, f"{path}:{line}")
                if record is not None:
                    return record
                continue
            if raw:
                return None  # a watched file's last line is still being written
            following = names[names.index(self.cursor.file) + 1 :]
            if not following:
                return None
            self.cursor = Cursor(epoch=self.cursor.epoch, file=following[0])

    def _is_watched(self, path: Path) -> bool:
        return self.config.watch_dir is not None and path.parent.resolve() == self.config.watch_dir.resolve()

    def _parse(self, raw: bytes, origin: str) -> PromptRecord | None:
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            return None
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            prompt = obj.get(self.config.prompt_field)
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"no non-empty string {self.config.prompt_field!r}")
        except ValueError as e:
            self.skipped += 1
            log.warning("skipping a prompt record", extra={"origin": origin, "error": str(e)})
            return None
        answer = obj.get(self.config.answer_field)
        metadata = {k: v for k, v in obj.items() if k not in (self.config.prompt_field, self.config.answer_field)}
        return PromptRecord(prompt, None if answer is None else str(answer), metadata, origin)
