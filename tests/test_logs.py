"""The JSON log format: one object per line with every extra field."""

import io
import json
import logging

import pytest

from streaming.logs import JsonFormatter, setup_logging


def format_record(**kwargs) -> dict:
    logger = logging.getLogger("streaming.test")
    record = logger.makeRecord("streaming.test", kwargs.pop("level", logging.INFO), __file__, 1,
                               kwargs.pop("msg", "session %s closed"), kwargs.pop("args", ("abc",)),
                               kwargs.pop("exc_info", None), extra=kwargs.pop("extra", None))
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def test_fields_and_extras():
    extra = {"event": "session_closed", "session_id": "abc", "duration_s": 1.5, "utterances": 2,
             "audio_s": 1.2, "outcome": "completed", "principal": None}
    out = format_record(extra=extra)
    assert out["level"] == "INFO" and out["logger"] == "streaming.test"
    assert out["message"] == "session abc closed"
    assert out["time"].endswith("+00:00") and "T" in out["time"]
    for key, value in extra.items():
        assert out[key] == value
    assert "args" not in out and "msg" not in out and "levelno" not in out


def test_exceptions_and_odd_values_stay_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        out = format_record(level=logging.ERROR, msg="failed", args=(), exc_info=sys.exc_info(),
                            extra={"obj": object(), "path": "a\nb"})
    assert out["level"] == "ERROR" and "ValueError: boom" in out["exception"]
    assert out["obj"].startswith("<object") and out["path"] == "a\nb"


def test_setup_logging_json_and_text():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json", stream=stream)
        logging.getLogger("streaming.x").info("hello %d", 3, extra={"event": "x"})
        logging.getLogger("websockets.server").info("hidden")
        lines = stream.getvalue().splitlines()
        assert [json.loads(line)["message"] for line in lines] == ["hello 3"]
        assert json.loads(lines[0])["event"] == "x"
        stream.seek(0)
        stream.truncate(0)
        setup_logging("INFO", "text", stream=stream)
        logging.getLogger("streaming.x").info("plain")
        assert stream.getvalue().rstrip().endswith("INFO streaming.x: plain")
        with pytest.raises(ValueError, match="text, json"):
            setup_logging("INFO", "xml")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("websockets").setLevel(logging.NOTSET)
