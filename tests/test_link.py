"""The link of a codec and a session, sans I/O: every protocol gets the same frame limits and bug handling."""

import json
import logging

import pytest

from streaming import events as ev
from streaming.codecs import CODECS, Codec, Frame, Handshake, codec_for_path
from streaming.config import Config
from streaming.http import STREAM_PATHS
from streaming.link import Link, Send
from streaming.protocol import ProtocolError
from streaming.session import Close, ModelInfo, Session


def test_every_stream_path_has_its_codec():
    assert set(CODECS) == set(STREAM_PATHS)
    for path in STREAM_PATHS:
        assert codec_for_path(path).path == path


def link_for(path, query=""):
    codec = codec_for_path(path)("s1", "counting", Handshake(path, query))
    return Link(codec, Session("s1", Config(), ModelInfo("counting")), max_message_bytes=1000)


@pytest.mark.parametrize("path", STREAM_PATHS)
def test_a_frame_over_the_limit_is_refused_on_every_protocol(path):
    link = link_for(path)
    link.open()
    if path == "/v1/stream":
        link.receive(json.dumps({"type": "start"}))
    actions = link.receive(b"\0" * 1001)
    assert link.closed and isinstance(actions[-1], Close) and actions[-1].code == 1009
    errors = [a.event for a in actions if isinstance(a, Send) and isinstance(a.event, ev.Error)]
    assert [e.code for e in errors] == ["message_too_large"]


class BuggyCodec(Codec):
    name, path = "buggy", "/buggy"

    def opened(self):
        return [ev.Start()]

    def decode(self, frame):
        if frame == "boom":
            raise RuntimeError("decoder bug")
        return [ev.Keepalive(), Frame("ack")]

    def encode(self, event):
        if isinstance(event, ev.Ready):
            raise RuntimeError("encoder bug")
        return [Frame(type(event).__name__)]


def test_a_codec_bug_loses_one_event_or_ends_the_session_cleanly(caplog):
    link = Link(BuggyCodec("s1", "m", Handshake("/buggy")), Session("s1", Config(), ModelInfo("m")))
    with caplog.at_level(logging.ERROR, logger="streaming.link"):
        assert link.open() == []  # Ready could not be encoded: logged, nothing sent
    assert "could not encode Ready" in caplog.text
    assert link.receive("ok") == [Send(Frame("ack"))] and link.last_valid_message == "keepalive"
    with caplog.at_level(logging.ERROR, logger="streaming.link"):
        actions = link.receive("boom")
    assert "internal error decoding a frame" in caplog.text
    assert [a.frame.data for a in actions if isinstance(a, Send)] == ["Error"]
    assert link.closed and isinstance(actions[-1], Close) and actions[-1].code == 1011


def test_the_codec_chooses_the_close_of_a_fatal_error():
    link = link_for("/v1/listen")
    link.open()
    actions = link.fail(ProtocolError("idle_timeout", "no audio"))
    close = actions[-1]
    assert isinstance(close, Close) and close.code == 1011 and "net0001" in close.reason.lower()
