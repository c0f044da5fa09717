"""Smart turn detection without sockets or models: the policy, the endpointer's pauses, the session's
turn state machine (scripted VAD and scripted model scores), and eager decodes in the scheduler and engine."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from streaming import events as ev
from streaming.audio import float_to_pcm16
from streaming.config import Config, VadOptions
from streaming.engine import Engine
from streaming.scheduler import Requested, Scheduler, WorkKind
from streaming.session import (Close, Emit, FeedAudio, ModelInfo, OpenUtterance, RequestEager, RequestFinal,
                               RequestPartial, ScoreTurn, Session, Wake)
from streaming.turns import SCORE_AUDIO_S, Decision, PauseTracker, decide, thresholds
from streaming.vad import (Endpointer, UtteranceAudio, UtteranceEnded, UtterancePaused, UtteranceResumed,
                           UtteranceStarted)
from tests.fakes import CountingBackend

SR = 16_000


def loud(frame):
    return float(np.abs(frame).max()) > 0.05


def tone(seconds):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds):
    return np.zeros(int(seconds * SR), np.float32)


# ---- the policy --------------------------------------------------------------------------------

@pytest.mark.parametrize("probability, eagerness, eager, expected", [
    (0.99, "medium", False, Decision.END),
    (0.93, "medium", False, Decision.END),
    (0.92, "medium", False, Decision.WAIT),
    (0.8, "medium", True, Decision.EAGER),
    (0.69, "medium", True, Decision.WAIT),
    (0.8, "auto", True, Decision.EAGER),
    (0.94, "low", False, Decision.WAIT),
    (0.85, "low", True, Decision.EAGER),
    (0.96, "low", True, Decision.END),
    (0.85, "high", False, Decision.END),
    (0.6, "high", True, Decision.EAGER),
    (0.4, "high", True, Decision.WAIT),
])
def test_decide(probability, eagerness, eager, expected):
    assert decide(probability, eagerness, eager) is expected


def test_eagerness_orders_its_thresholds():
    low, medium, high = (thresholds(e) for e in ("low", "medium", "high"))
    assert low.end > medium.end > high.end
    assert all(t.eager < t.end for t in (low, medium, high))
    assert thresholds("auto") == medium


def test_pause_tracker_holds_and_releases_in_order():
    t = PauseTracker()
    t.fed(np.ones(10, np.float32))
    pause = t.begin(at_sample=10)
    assert t.current(pause) and not t.current(pause - 1)
    t.hold(np.full(3, 2.0, np.float32))
    t.hold(np.full(2, 3.0, np.float32))
    t.eager_sent = True
    held, retract = t.resume()
    assert [a.tolist() for a in held] == [[2.0] * 3, [3.0] * 2] and retract
    assert not t.paused and not t.current(pause)
    t.begin(at_sample=20)
    t.hold(np.ones(4, np.float32))
    t.end()
    assert t.resume() == ([], False)


def test_pause_tracker_scores_the_last_8_seconds():
    t = PauseTracker()
    for i in range(12):
        t.fed(np.full(SR, float(i), np.float32))
    audio = t.score_audio()
    assert audio.size == int(SCORE_AUDIO_S * SR)
    assert audio[0] == 4.0 and audio[-1] == 11.0
    assert PauseTracker().score_audio().size == 0


# ---- the endpointer's pauses -----------------------------------------------------------------------

def smart_vad(**kw) -> VadOptions:
    return dataclasses.replace(VadOptions(), turn_detection="smart", turn_pause_ms=150,
                               turn_max_silence_ms=900, endpoint_silence_ms=300, **kw)


def feed(ep: Endpointer, *pieces):
    events = []
    for piece in pieces:
        events += ep.feed(piece)
    return [e for e in events if not isinstance(e, UtteranceAudio)]


def test_smart_endpointer_reports_a_pause_once_then_the_resume():
    ep = Endpointer(smart_vad(), classify=loud)
    events = feed(ep, tone(1.0), silence(0.5), tone(0.6))
    kinds = [type(e) for e in events]
    assert kinds == [UtteranceStarted, UtterancePaused, UtteranceResumed]
    paused, resumed = events[1], events[2]
    assert paused.speech_end_sample == pytest.approx(1.0 * SR, abs=480)
    assert paused.at_sample - paused.speech_end_sample == pytest.approx(0.15 * SR, abs=480)
    assert resumed.at_sample == pytest.approx(1.5 * SR, abs=480)
    assert ep.in_utterance  # a 500 ms pause is below max silence, and endpoint_silence_ms does not apply


def test_smart_endpointer_ends_at_max_silence_in_stream_audio():
    ep = Endpointer(smart_vad(), classify=loud)
    events = feed(ep, tone(1.0), silence(1.0))
    assert [type(e) for e in events] == [UtteranceStarted, UtterancePaused, UtteranceEnded]
    assert events[-1].reason == "max_silence"
    assert events[-1].end_sample == pytest.approx(1.0 * SR, abs=480)


@pytest.mark.parametrize("end", ["end_turn", "force_end", "flush"])
def test_an_end_during_a_pause_ends_at_the_speech(end):
    ep = Endpointer(smart_vad(), classify=loud)
    feed(ep, tone(1.0), silence(0.3))
    assert ep.paused
    events = ep.end_turn() if end == "end_turn" else getattr(ep, end)()
    ended = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ended) == 1 and ended[0].end_sample == pytest.approx(1.0 * SR, abs=480)
    assert ended[0].reason == {"end_turn": "end_of_turn", "force_end": "forced", "flush": "stream_end"}[end]
    assert not ep.paused and not ep.in_utterance


@pytest.mark.parametrize("decided_after_s", [0.2, 0.45, 0.75])
def test_the_next_utterance_after_a_turn_end_starts_where_its_audio_says(decided_after_s):
    """Whenever in the pause the turn is ended, the next utterance gets the same pre-roll from that
    pause's audio: the silence after the last word goes to the idle state, not away with the utterance."""
    ep = Endpointer(smart_vad(), classify=loud)
    gap = silence(0.8) + np.linspace(0, 1e-4, int(0.8 * SR), dtype=np.float32)  # distinct samples
    cut = int(decided_after_s * SR)
    feed(ep, tone(1.0), gap[:cut])
    assert ep.paused
    ended = [e for e in ep.end_turn() if isinstance(e, UtteranceEnded)]
    assert ended[0].end_sample == pytest.approx(1.0 * SR, abs=480)
    events = [e for e in ep.feed(gap[cut:]) + ep.feed(tone(0.5)) if isinstance(e, UtteranceStarted)]
    (started,) = events
    preroll = VadOptions().preroll_ms * SR // 1000
    assert started.start_sample == pytest.approx(1.8 * SR - preroll, abs=480)
    head = started.audio[: int(1.8 * SR) - started.start_sample]
    assert np.array_equal(head, gap[started.start_sample - SR:])


def test_silence_and_manual_modes_report_no_pauses():
    silent = Endpointer(dataclasses.replace(VadOptions(), endpoint_silence_ms=600), classify=loud)
    events = feed(silent, tone(1.0), silence(0.3), tone(0.5), silence(0.7))
    assert [type(e) for e in events] == [UtteranceStarted, UtteranceEnded]
    assert events[-1].reason == "endpoint"
    manual = Endpointer(dataclasses.replace(VadOptions(), turn_detection="manual"), classify=loud)
    assert [type(e) for e in feed(manual, tone(1.0), silence(3.0))] == [UtteranceStarted]


# ---- the session's turn state machine (scripted scores) ----------------------------------------------

class TurnDriver:
    """A typed Session whose engine is a CountingBackend answered inline; turn scores are scripted."""

    def __init__(self, scores=(), eager_decodes=True, turn_model=True, final_reuses_partial=False, prefetch=True,
                 **start):
        self.backend = CountingBackend()
        info = ModelInfo("counting", turn_model=turn_model, eager_decodes=eager_decodes,
                         final_reuses_partial=final_reuses_partial)
        config = Config(vad=dataclasses.replace(VadOptions(), turn_prefetch=prefetch))
        self.session = Session("s", config, info, classify=loud)
        self.scores = list(scores)
        self.states = {}
        self.events: list = []
        self.asked: list[ScoreTurn] = []
        self.eagers: list[RequestEager] = []
        self.wakes: list[float | None] = []
        self.final_audio: dict[int, int] = {}
        self.partial_audio: list[int] = []
        self.closed = None
        self.run(self.session.handle(ev.Start(options={"turn_detection": "smart", "turn_pause_ms": 150,
                                                       "turn_max_silence_ms": 1500, **start})))

    def audio(self, samples, chunk_s=0.1):
        n = int(chunk_s * SR)
        for i in range(0, samples.size, n):
            self.run(self.session.handle(ev.Audio(float_to_pcm16(samples[i:i + n]))))

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
            elif isinstance(a, RequestPartial):
                st = self.states[a.utterance_id]
                self.partial_audio.append(st.num_samples)
                self.run(self.session.partial_ready(a.utterance_id, self.backend.step([st])[0]))
            elif isinstance(a, RequestFinal):
                st = self.states[a.utterance_id]
                self.final_audio[a.utterance_id] = st.num_samples
                self.run(self.session.final_ready(a.utterance_id, self.backend.finalize([st])[0]))
            elif isinstance(a, ScoreTurn):
                self.asked.append(a)
                if self.scores:
                    self.run(self.session.turn_scored(a.utterance_id, a.pause, self.scores.pop(0)))
            elif isinstance(a, RequestEager):
                self.eagers.append(a)
                st = self.states[a.utterance_id]
                self.run(self.session.eager_ready(a.utterance_id, a.pause, self.backend.finalize_open([st])[0]))
            elif isinstance(a, Wake):
                self.wakes.append(a.after_s)

    def kinds(self):
        names = {ev.SpeechStarted: "start", ev.SpeechEnded: "end", ev.Final: "final",
                 ev.EagerEndOfTurn: "eager", ev.TurnResumed: "resumed"}
        return [names[type(e)] for e in self.events if type(e) in names]

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def test_a_complete_turn_ends_at_the_pause():
    d = TurnDriver(scores=[0.99])
    d.audio(np.concatenate([silence(0.3), tone(2.0), silence(0.4)]))
    assert d.kinds() == ["start", "end", "final"]
    end, = d.of(ev.SpeechEnded)
    final, = d.of(ev.Final)
    assert end.reason == final.reason == "end_of_turn"
    assert end.end_s == pytest.approx(2.3, abs=0.05)
    # the utterance's audio stops at the pause: 150 ms after the speech, not at the last chunk
    paused_at = d.asked[0].audio.size
    assert d.final_audio[0] == paused_at
    assert d.wakes == [pytest.approx(1.35), None]


@pytest.mark.parametrize("reuses", [True, False])
def test_a_pause_asks_for_a_partial_only_when_the_final_would_reuse_it(reuses):
    """A partial at the pause shows the latest words while the model scores; unless the final reuses its
    work, it only holds the worker when the final is due, so it is not asked for."""
    d = TurnDriver(scores=[0.99], final_reuses_partial=reuses, prefetch=False, step_s=5.0)
    d.audio(np.concatenate([tone(1.0), silence(0.4)]))
    assert len(d.asked) == 1 and d.final_audio
    expected = [d.final_audio[0]] if reuses else []  # of all the audio to the pause: what the final decodes
    assert d.partial_audio == expected


def test_a_hesitation_stays_one_utterance_and_loses_no_audio():
    d = TurnDriver(scores=[0.1, 0.99])
    d.audio(np.concatenate([tone(1.5), silence(0.6), tone(1.0), silence(0.4)]))
    assert d.kinds() == ["start", "end", "final"]
    assert len(d.asked) == 2
    # everything up to the second pause reached the model, the held silence of the first pause included
    assert d.final_audio[0] == d.asked[1].audio.size


def test_eager_then_resumed_then_final():
    d = TurnDriver(scores=[0.8, 0.99], eager_end_of_turn=True)
    d.audio(np.concatenate([tone(1.5), silence(0.6), tone(1.0), silence(0.4)]))
    assert d.kinds() == ["start", "eager", "resumed", "end", "final"]
    eager, = d.of(ev.EagerEndOfTurn)
    assert eager.text == "w0 w1 w2"  # 1.5 s + 150 ms of audio: three half-second words
    resumed, = d.of(ev.TurnResumed)
    assert resumed.at_s == pytest.approx(2.1, abs=0.05)
    assert len(d.of(ev.Final)[0].text.split()) > 3


def test_eager_then_max_silence_gives_the_eager_text_as_final():
    d = TurnDriver(scores=[0.8], eager_end_of_turn=True)
    d.audio(np.concatenate([tone(1.5), silence(2.0)]))
    assert d.kinds() == ["start", "eager", "end", "final"]
    assert d.of(ev.SpeechEnded)[0].reason == "max_silence"
    assert d.of(ev.Final)[0].text == d.of(ev.EagerEndOfTurn)[0].text


def test_the_wall_clock_ends_a_pause_when_the_client_sends_nothing():
    d = TurnDriver(scores=[0.1])
    d.audio(np.concatenate([tone(1.5), silence(0.3)]))
    assert d.kinds() == ["start"] and d.wakes == [pytest.approx(1.35)]
    d.run(d.session.wake())
    assert d.kinds() == ["start", "end", "final"]
    assert d.of(ev.SpeechEnded)[0].reason == "max_silence"
    d.run(d.session.wake())  # a late timer changes nothing
    assert d.kinds() == ["start", "end", "final"]


@pytest.mark.parametrize("prefetch", [True, False])
def test_eager_off_sends_no_eager_event(prefetch):
    d = TurnDriver(scores=[0.8], prefetch=prefetch)
    d.audio(np.concatenate([tone(1.5), silence(0.3)]))
    assert len(d.eagers) == (1 if prefetch else 0) and d.kinds() == ["start"]


@pytest.mark.parametrize("prefetch", [True, False])
def test_prefetch_decodes_at_the_pause_before_the_model_answers(prefetch):
    """With prefetch the decode is asked for with the score (the final of an ended turn is then that decode,
    handed over by the engine); without it, only once the model answers EAGER."""
    d = TurnDriver(prefetch=prefetch, eager_end_of_turn=True)  # answers scripted by hand
    d.audio(np.concatenate([tone(1.5), silence(0.3)]))
    pause = d.asked[0]
    assert len(d.eagers) == (1 if prefetch else 0)
    assert d.kinds() == ["start"]  # a decode, but no eager event until the model says so
    d.run(d.session.turn_scored(pause.utterance_id, pause.pause, 0.8))
    assert len(d.eagers) == 1 and d.kinds() == ["start", "eager"]  # never a second decode of the pause
    d.run(d.session.turn_scored(pause.utterance_id, pause.pause, 0.8))
    assert d.kinds() == ["start", "eager"]  # once per pause


def test_a_prefetched_decode_is_not_sent_when_the_model_says_wait_and_the_next_pause_decodes_anew():
    d = TurnDriver(scores=[0.1, 0.8], eager_end_of_turn=True)
    d.audio(np.concatenate([tone(1.5), silence(0.3), tone(1.0), silence(0.3)]))
    assert [e.pause for e in d.eagers] == [1, 2]
    assert d.kinds() == ["start", "eager"]  # the first pause's text (WAIT) never went out
    assert len(d.of(ev.EagerEndOfTurn)[0].text.split()) > 3  # all the audio to the second pause


def test_a_score_for_an_old_pause_is_stale():
    d = TurnDriver()  # answers scripted by hand
    d.audio(np.concatenate([tone(1.5), silence(0.3), tone(0.5)]))
    old = d.asked[0]
    d.run(d.session.turn_scored(old.utterance_id, old.pause, 0.99))
    assert d.kinds() == ["start"]  # speech resumed before the answer came
    d.audio(silence(0.3))
    new = d.asked[1]
    d.run(d.session.turn_scored(new.utterance_id, new.pause, None))  # the model failed: the pause waits
    assert d.kinds() == ["start"]
    d.run(d.session.turn_scored(new.utterance_id, new.pause, 0.99))
    assert d.kinds() == ["start", "end", "final"]


@pytest.mark.parametrize("state", ["speaking", "awaiting score", "waiting", "eager sent"])
def test_finalize_in_every_state(state):
    scores = {"speaking": [], "awaiting score": [], "waiting": [0.1], "eager sent": [0.8]}[state]
    d = TurnDriver(scores=scores, eager_end_of_turn=True)
    d.audio(tone(1.5) if state == "speaking" else np.concatenate([tone(1.5), silence(0.3)]))
    d.run(d.session.handle(ev.Finalize()))
    assert d.kinds()[-2:] == ["end", "final"]
    assert d.of(ev.SpeechEnded)[0].reason == "finalize"
    if state != "speaking":
        assert d.wakes[-1] is None
        assert d.final_audio[0] == d.asked[0].audio.size  # the held tail is not decoded
    if d.asked:  # an answer after the end is stale
        a = d.asked[0]
        d.run(d.session.turn_scored(a.utterance_id, a.pause, 0.99))
    assert len(d.of(ev.Final)) == 1


def test_stop_during_a_pause_drains_the_turn():
    d = TurnDriver(scores=[0.1])
    d.audio(np.concatenate([tone(1.5), silence(0.3)]))
    d.run(d.session.handle(ev.Stop()))
    assert d.kinds() == ["start", "end", "final"]
    assert d.of(ev.SpeechEnded)[0].reason == "stream_end"
    assert isinstance(d.events[-1], ev.Ended) and d.closed.code == 1000


def test_smart_needs_the_turn_model_and_eager_needs_eager_decodes():
    d = TurnDriver(turn_model=False)
    errors = d.of(ev.Error)
    assert errors and errors[0].code == "invalid_option" and "end-of-turn model" in errors[0].message
    d = TurnDriver(eager_decodes=False, eager_end_of_turn=True)
    assert d.of(ev.Error)[0].code == "invalid_option"
    d = TurnDriver(eager_decodes=False)  # smart without eager is fine
    assert not d.of(ev.Error) and isinstance(d.events[0], ev.Ready)
    assert d.events[0].options["turn_detection"] == "smart"


def test_silence_mode_never_asks_the_turn_model():
    backend = CountingBackend()
    session = Session("s", Config(), ModelInfo("counting", turn_model=True), classify=loud)
    actions = session.handle(ev.Start())
    audio = float_to_pcm16(np.concatenate([tone(1.0), silence(0.3), tone(1.0), silence(0.8)]))
    for i in range(0, len(audio), 3200):
        actions += session.handle(ev.Audio(audio[i:i + 3200]))
    assert not any(isinstance(a, (ScoreTurn, RequestEager, Wake)) for a in actions)
    del backend


# ---- eager decodes in the scheduler --------------------------------------------------------------

def test_a_final_after_a_finished_eager_decode_reuses_it():
    s = Scheduler()
    s.open("u", "g")
    s.feed("u", 100)
    assert s.request("u", WorkKind.EAGER, 0.0).status is Requested.QUEUED
    batch = s.next_batch(0.0)
    assert batch.kind is WorkKind.EAGER
    assert s.done(batch, 0.1, [], 0.1) == []  # the utterance stays open
    assert s.request("u", WorkKind.FINAL, 0.2).status is Requested.REUSED
    assert "u" not in s


def test_a_final_joins_the_running_eager_decode():
    s = Scheduler()
    s.open("u", "g")
    s.feed("u", 100)
    s.request("u", WorkKind.EAGER, 0.0)
    batch = s.next_batch(0.0)
    assert s.request("u", WorkKind.FINAL, 0.05).status is Requested.FROM_EAGER
    assert s.backlog("g").finals == 1
    assert s.done(batch, 0.1, [], 0.1) == ["u"]


def test_new_audio_makes_the_eager_decode_stale():
    s = Scheduler()
    s.open("u", "g")
    s.feed("u", 100)
    s.request("u", WorkKind.EAGER, 0.0)
    s.done(s.next_batch(0.0), 0.1, [], 0.1)
    s.feed("u", 50)  # speech resumed
    assert s.request("u", WorkKind.FINAL, 0.2).status is Requested.QUEUED
    # a waiting eager decode is withdrawn when audio grows, and a final drops one still waiting
    s2 = Scheduler()
    s2.open("v", "g")
    s2.feed("v", 100)
    s2.request("v", WorkKind.EAGER, 0.0)
    assert s2.cancel("v", WorkKind.EAGER) and not s2.cancel("v", WorkKind.EAGER)
    s2.request("v", WorkKind.EAGER, 0.0)
    outcome = s2.request("v", WorkKind.FINAL, 0.0)
    assert outcome.status is Requested.QUEUED and outcome.dropped_eager


def test_finals_go_before_eager_decodes_before_partials():
    s = Scheduler()
    for key in "abc":
        s.open(key, key)
        s.feed(key, 100)
    s.request("a", WorkKind.PARTIAL, 0.0)
    s.request("b", WorkKind.EAGER, 0.1)
    s.request("c", WorkKind.FINAL, 0.2)
    order = []
    while (batch := s.next_batch(1.0)) is not None:
        order.append(batch.kind)
        s.done(batch, 0.01, [], 1.0)
    assert order == [WorkKind.FINAL, WorkKind.EAGER, WorkKind.PARTIAL]


def test_eager_decodes_are_dropped_while_finals_are_late():
    s = Scheduler(partial_shed_s=0.5)
    s.open("late", "g1")
    s.open("u", "g2")
    s.feed("late", 100)
    s.feed("u", 100)
    s.request("late", WorkKind.FINAL, 0.0)
    assert s.request("u", WorkKind.EAGER, 1.0).status is Requested.STALE  # the final has waited 1 s
    assert s.shed.dropped == 1


# ---- eager decodes in the engine -------------------------------------------------------------------

async def test_engine_answers_the_final_with_the_eager_decode():
    backend = CountingBackend()
    engine = Engine(backend)
    engine.start()
    try:
        engine.open("u", _options())
        engine.feed("u", np.ones(SR, np.float32))
        eager = await asyncio.wait_for(engine.request_eager("u"), 30)
        final = await asyncio.wait_for(engine.request_final("u"), 30)
        assert final.text == eager.text == "w0 w1"
        assert [kind for kind, _ in backend.batches] == ["final"]  # one decode, used twice
        assert engine.stats.finals_from_eager == 1 and engine.stats.eager_batches == 1
        engine.open("v", _options())
        engine.feed("v", np.ones(SR, np.float32))
        await asyncio.wait_for(engine.request_eager("v"), 30)
        engine.feed("v", np.ones(SR, np.float32))  # speech resumed: the final decodes again
        final = await asyncio.wait_for(engine.request_final("v"), 30)
        assert final.text == "w0 w1 w2 w3"
        assert engine.stats.finals_from_eager == 1
    finally:
        engine.stop()


async def test_engine_scores_turns_on_its_own_worker():
    class Model:
        name = "scripted"
        calls: list[int] = []

        def score(self, audios):
            self.calls.append(len(audios))
            return [min(1.0, a.size / SR) for a in audios]

    engine = Engine(CountingBackend(), turn_model=Model())
    engine.start()
    try:
        scores = await asyncio.wait_for(asyncio.gather(
            engine.score_turn(np.ones(SR // 2, np.float32)), engine.score_turn(np.ones(2 * SR, np.float32))), 30)
        assert scores == [0.5, 1.0]
        assert engine.stats.turn_scores == 2
    finally:
        engine.stop()
    no_model = Engine(CountingBackend())
    no_model.start()
    try:
        with pytest.raises(Exception, match="no end-of-turn model"):
            await no_model.score_turn(np.ones(10, np.float32))
    finally:
        no_model.stop()


def _options():
    from streaming.results import UtteranceOptions

    return UtteranceOptions(language="en")
