"""The wire-free core: typed commands in, typed events out (clear, finalize, manual mode, words, configure)."""

import numpy as np
import pytest

from streaming import events as ev
from streaming.audio import float_to_pcm16
from streaming.config import Config
from streaming.results import FinalResult, Word
from streaming.session import (Close, DiscardUtterance, Emit, FeedAudio, ModelInfo, OpenUtterance, RequestFinal,
                               RequestPartial, Session, estimate_words)
from tests.fakes import CountingBackend

from tests.test_session import loud, silence, tone  # the same stand-in speech as the v1 session tests


class Core:
    """A Session answered inline by a CountingBackend; records typed events and engine actions."""

    def __init__(self, backend=None, words=None):
        self.backend = backend or CountingBackend()
        info = ModelInfo(self.backend.name, False, 30.0, self.backend.validate_options)
        self.session = Session("s", Config(), info, classify=loud)
        self.states, self.events, self.discarded, self.closed = {}, [], [], None
        self.words = words  # utterance id -> words the fake backend returns

    def do(self, command):
        self.run(self.session.handle(command))

    def audio(self, samples, chunk=3200):
        data = float_to_pcm16(samples)
        for i in range(0, len(data), chunk):
            self.do(ev.Audio(data[i:i + chunk]))

    def run(self, actions):
        for a in actions:
            if isinstance(a, Emit):
                self.events.append(a.event)
            elif isinstance(a, Close):
                self.closed = a
            elif isinstance(a, OpenUtterance):
                self.states[a.utterance_id] = self.backend.new_utterance(a.options)
            elif isinstance(a, FeedAudio):
                self.states[a.utterance_id].append_audio(a.audio)
            elif isinstance(a, DiscardUtterance):
                self.discarded.append(a.utterance_id)
                del self.states[a.utterance_id]
            elif isinstance(a, RequestPartial):
                self.run(self.session.partial_ready(a.utterance_id, self.backend.step([self.states[a.utterance_id]])[0]))
            elif isinstance(a, RequestFinal):
                result = self.backend.finalize([self.states[a.utterance_id]])[0]
                if self.words is not None:
                    result = FinalResult(result.text, result.language, words=self.words(result.text),
                                         word_timing="test alignment")
                self.run(self.session.final_ready(a.utterance_id, result))

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def test_clear_drops_the_open_utterance_and_no_final_is_owed():
    c = Core()
    c.do(ev.Start())
    c.audio(np.concatenate([silence(0.3), tone(1.0)]))
    assert [e.utterance_id for e in c.of(ev.SpeechStarted)] == [0]
    c.do(ev.Clear())
    assert c.discarded == [0] and c.of(ev.Cleared) == [ev.Cleared(0, 1.3)]
    c.audio(np.concatenate([silence(1.0), tone(1.0), silence(1.0)]))
    c.do(ev.Stop())
    assert [f.utterance_id for f in c.of(ev.Final)] == [1]
    assert isinstance(c.events[-1], ev.Ended) and c.closed == Close(1000, "end of stream")


def test_clear_and_finalize_with_nothing_open_say_so():
    c = Core()
    c.do(ev.Start())
    c.audio(silence(0.5))
    c.do(ev.Clear())
    c.do(ev.Finalize())
    assert c.of(ev.Cleared) == [ev.Cleared(None, 0.5)]
    assert c.of(ev.Finalized) == [ev.Finalized(0.5)]
    assert c.discarded == []


@pytest.mark.parametrize("endpointing, finals", [(True, 2), (False, 1)])
def test_manual_mode_only_finalize_ends_an_utterance(endpointing, finals):
    c = Core()
    c.do(ev.Start(options={"endpointing": endpointing}))
    c.audio(np.concatenate([silence(0.3), tone(1.0), silence(1.5), tone(1.0), silence(1.5)]))
    c.do(ev.Finalize())
    got = c.of(ev.Final)
    assert len(got) == finals
    assert got[-1].reason == ("endpoint" if endpointing else "finalize")
    if not endpointing:
        assert c.of(ev.Finalized) == [] and got[0].end_s == pytest.approx(5.3, abs=0.05)


def test_final_reasons_follow_what_ended_the_utterance():
    c = Core()
    c.do(ev.Start())
    c.audio(np.concatenate([silence(0.3), tone(1.0), silence(1.0), tone(1.0)]))
    c.do(ev.Finalize())
    c.audio(tone(1.0))
    c.do(ev.Stop())
    assert [f.reason for f in c.of(ev.Final)] == ["endpoint", "finalize", "stream_end"]
    assert [e.reason for e in c.of(ev.SpeechEnded)] == ["endpoint", "finalize", "stream_end"]


def test_words_from_the_backend_are_moved_to_stream_time():
    def words(text):
        return [Word(w, 0.5 * i, 0.5 * i + 0.4, 0.9) for i, w in enumerate(text.split())]

    c = Core(words=words)
    c.do(ev.Start(options={"words": True}))
    c.audio(np.concatenate([silence(1.0), tone(1.5), silence(1.0)]))
    [final] = c.of(ev.Final)
    assert final.word_timing == "test alignment"
    assert [w.word for w in final.words] == final.text.split()
    assert final.words[0].start_s == pytest.approx(final.start_s)
    assert final.words[1].start_s == pytest.approx(final.start_s + 0.5)


def test_words_are_estimated_and_said_so_when_the_backend_gives_none():
    c = Core()
    c.do(ev.Start(options={"words": True}))
    c.audio(np.concatenate([silence(1.0), tone(2.0), silence(1.0)]))
    [final] = c.of(ev.Final)
    assert final.word_timing.startswith("estimated")
    assert [w.word for w in final.words] == final.text.split()
    starts = [w.start_s for w in final.words]
    assert starts == sorted(starts) and final.start_s <= starts[0] and final.words[-1].end_s <= final.end_s + 1e-6


def test_no_words_unless_asked():
    c = Core()
    c.do(ev.Start())
    c.audio(np.concatenate([silence(1.0), tone(1.0), silence(1.0)]))
    assert [f.words for f in c.of(ev.Final)] == [None]


@pytest.mark.parametrize("text, start, end, expected", [
    ("", 0.0, 1.0, ()),
    ("a bb", 1.0, 4.0, (Word("a", 1.0, 2.0, 0.0), Word("bb", 2.0, 4.0, 0.0))),
    ("one", 2.0, 2.0, (Word("one", 2.0, 2.0, 0.0),)),
])
def test_estimate_words(text, start, end, expected):
    assert estimate_words(text, start, end) == expected


def test_configure_before_audio_may_change_everything_including_the_format():
    c = Core()
    c.do(ev.Start(24000, "pcm_s16le"))
    c.do(ev.Configure({"sample_rate": 8000, "encoding": "mulaw", "preroll_ms": 300, "language": "en"}))
    [configured] = c.of(ev.Configured)
    assert configured.options["sample_rate"] == 8000 and configured.options["encoding"] == "mulaw"
    assert configured.options["preroll_ms"] == 300 and configured.options["language"] == "en"
    assert not c.of(ev.Error)


@pytest.mark.parametrize("fields, ok", [
    ({"endpoint_silence_ms": 300}, True),
    ({"endpointing": False}, True),
    ({"language": "en", "context": "clubs"}, True),
    ({"preroll_ms": 500}, True),
    ({"speech_threshold": 0.7}, False),  # the test's classifier has no Silero cut-off to move
    ({"sample_rate": 8000}, False),
    ({"vad_aggressiveness": 3}, False),
    ({"endpoint_silence_ms": 5}, False),
    ({"language": "xx"}, False),
    ({"nonsense": 1}, False),
])
def test_configure_after_audio_changes_only_what_can_change(fields, ok):
    c = Core()
    c.do(ev.Start())
    c.audio(np.concatenate([silence(0.3), tone(0.5)]))
    before = c.session.vad_options
    c.do(ev.Configure(fields))
    errors = c.of(ev.Error)
    if ok:
        assert not errors and len(c.of(ev.Configured)) == 1
    else:
        assert [(e.code, e.fatal) for e in errors] == [("invalid_update", False)]
        assert c.session.vad_options == before and c.session.state == "streaming"
    c.audio(np.concatenate([tone(0.5), silence(1.0)]))
    c.do(ev.Stop())
    assert len(c.of(ev.Final)) >= 1 and isinstance(c.events[-1], ev.Ended)


def test_commands_before_start_are_refused_fatally():
    c = Core()
    c.do(ev.Audio(b"\0\0"))
    assert [(e.code, e.fatal) for e in c.of(ev.Error)] == [("audio_before_start", True)]
    assert c.closed == Close(1008, "audio_before_start")


@pytest.mark.parametrize("rate, encoding, code", [
    (7999, "pcm_s16le", "unsupported_sample_rate"),
    (16000, "opus", "unsupported_encoding"),
    (True, "pcm_s16le", "unsupported_sample_rate"),
])
def test_a_start_with_a_format_the_server_lacks(rate, encoding, code):
    c = Core()
    c.do(ev.Start(rate, encoding))
    assert [e.code for e in c.of(ev.Error)] == [code] and c.closed.code == 1003


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_audio_is_heard(encoding):
    import audioop  # noqa: PLC0415 - Python 3.11's own G.711 encoder, an independent reference

    c = Core()
    c.do(ev.Start(8000, encoding))
    pcm = float_to_pcm16(np.concatenate([silence(0.3, 8000), tone(1.0, 8000), silence(1.0, 8000)]))
    data = audioop.lin2ulaw(pcm, 2) if encoding == "mulaw" else audioop.lin2alaw(pcm, 2)
    for i in range(0, len(data), 800):
        c.do(ev.Audio(data[i:i + 800]))
    c.do(ev.Stop())
    [final] = c.of(ev.Final)
    assert final.start_s == pytest.approx(0.15, abs=0.05) and final.end_s == pytest.approx(1.3, abs=0.05)


@pytest.mark.parametrize("threshold, live", [(0.5, True), (0.0, False)])
def test_the_speech_threshold_changes_live_only_where_silero_runs(threshold, live):
    import dataclasses

    from streaming.config import VadOptions
    from streaming.vad import Endpointer

    endpointer = Endpointer(VadOptions(speech_threshold=threshold))
    new = dataclasses.replace(endpointer.options, speech_threshold=0.7, preroll_ms=400, endpoint_silence_ms=300)
    assert endpointer.fixed_changes(new) == ([] if live else ["speech_threshold"])
    if live:
        endpointer.reconfigure(new)
        assert endpointer.classify.speech_threshold == 0.7 and endpointer.options == new


def test_finalized_comes_after_the_finals_still_owed():
    """A client that reads Finalized as "everything is in" must not get it before an earlier final."""
    c = Core()
    held = []
    c.run = (lambda real: (lambda actions: real([a for a in actions if not (
        isinstance(a, RequestFinal) and not held.append(a))])))(c.run)
    c.do(ev.Start())
    c.audio(np.concatenate([silence(0.3), tone(1.0), silence(1.0)]))
    assert len(held) == 1 and not c.of(ev.Final)
    c.do(ev.Finalize())
    assert not c.of(ev.Finalized)  # held: the final of utterance 0 is still owed
    request = held.pop()
    result = c.backend.finalize([c.states[request.utterance_id]])[0]
    c.run(c.session.final_ready(request.utterance_id, result))
    kinds = [type(e).__name__ for e in c.events if isinstance(e, (ev.Final, ev.Finalized))]
    assert kinds == ["Final", "Finalized"]
