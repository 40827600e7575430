"""The prompt stream: order, cursor, bad records, looping, and a watched directory fed while it runs."""

from __future__ import annotations

import json
import threading
import time

import pytest

from rewardline.trainer.config import DataConfig
from rewardline.trainer.prompts import Cursor, NoMorePrompts, PromptStream


def write(path, prompts, newline_at_end=True):
    text = "\n".join(json.dumps({"prompt": p, "answer": str(i), "topic": "t"}) for i, p in enumerate(prompts))
    path.write_text(text + ("\n" if newline_at_end else ""))


def test_reads_files_in_order_and_resumes_from_a_cursor(tmp_path):
    write(tmp_path / "a.jsonl", ["a0", "a1", "a2"])
    write(tmp_path / "b.jsonl", ["b0", "b1"], newline_at_end=False)
    config = DataConfig(train=[tmp_path / "a.jsonl", tmp_path / "b.jsonl"], loop=True)
    stream = PromptStream(config)
    first = stream.take(4)
    assert [r.prompt for r in first] == ["a0", "a1", "a2", "b0"]
    assert first[0].answer == "0" and first[0].metadata == {"topic": "t"} and first[3].origin.endswith("b.jsonl:1")
    cursor = Cursor(**stream.cursor.model_dump())  # what a checkpoint saves
    rest = [r.prompt for r in stream.take(4)]
    assert rest == ["b1", "a0", "a1", "a2"] and stream.cursor.epoch == 1  # loops over the files
    assert [r.prompt for r in PromptStream(config, cursor).take(4)] == rest


def test_bad_records_are_skipped_not_fatal(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        '{"prompt": "ok"}\nnot json\n[1, 2]\n{"prompt": ""}\n{"answer": "3"}\n\n{"prompt": "ok2"}\n'
    )
    stream = PromptStream(DataConfig(train=[tmp_path / "a.jsonl"], loop=False))
    assert [r.prompt for r in stream.take(2)] == ["ok", "ok2"] and stream.skipped == 4
    with pytest.raises(NoMorePrompts):
        stream.take(1)


def test_a_file_of_only_bad_records_does_not_loop_forever(tmp_path):
    (tmp_path / "a.jsonl").write_text("nope\n")
    with pytest.raises(NoMorePrompts, match="no valid record"):
        PromptStream(DataConfig(train=[tmp_path / "a.jsonl"], loop=True)).take(1)


def test_watched_directory_feeds_new_files_as_they_arrive(tmp_path):
    watch = tmp_path / "incoming"
    watch.mkdir()
    write(watch / "001.jsonl", ["x0", "x1"])
    stream = PromptStream(DataConfig(watch_dir=watch, loop=False, poll_s=0.05))
    assert [r.prompt for r in stream.take(2)] == ["x0", "x1"]

    def deliver():
        time.sleep(0.3)
        (watch / "002.jsonl.partial").write_text('{"prompt": "y0"}\n{"prompt": "y1"')  # not *.jsonl yet
        time.sleep(0.2)
        (watch / "002.jsonl.partial").rename(watch / "002.jsonl")

    thread = threading.Thread(target=deliver)
    thread.start()
    got = stream.take(1)  # waits for the file to arrive
    thread.join()
    assert [r.prompt for r in got] == ["y0"]
    # the last line has no newline yet: the stream waits for it rather than reading half a record
    with open(watch / "002.jsonl", "a") as f:
        f.write(', "answer": "7"}\n')
    assert [(r.prompt, r.answer) for r in stream.take(1)] == [("y1", "7")]
