"""Speaker labels without a model: the tracker with scripted voice vectors, word labels, meeting scoring."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.meetings import (ClipFacts, Segment, Turn, best_mapping, clips_by_speaker, plan_meeting,
                                 render_meeting, score, speaker_of, utterances_of)
from streaming.speakers import (HARD_MAX_SPEAKERS, SpeakerOptions, SpeakerTracker, speakers_of_words,
                                utterance_speaker, window_spans)
from streaming.speaker_encoder import SpeakerWindow

DIM = 256
HOP_S = 0.4
WINDOW_S = 1.6


def voice(direction: np.ndarray | int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """A unit vector near ``direction`` (an axis number or a vector): one window of that voice."""
    base = np.eye(DIM)[direction] if isinstance(direction, int) else np.asarray(direction, dtype=np.float64)
    vector = base / np.linalg.norm(base) + rng.normal(0, noise / np.sqrt(DIM), DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def utterance(voices: list, seed: int = 0) -> list[SpeakerWindow]:
    """Windows every 0.4 s of 1.6 s, the i-th of voice ``voices[i]`` (axis number or vector)."""
    rng = np.random.default_rng(seed)
    return [SpeakerWindow(i * HOP_S, i * HOP_S + WINDOW_S, voice(v, rng)) for i, v in enumerate(voices)]


# --- the tracker ---------------------------------------------------------------------------------

@pytest.mark.parametrize("utterances, expected", [
    pytest.param([[0] * 5], [[0] * 5], id="first-speaker-is-0"),
    pytest.param([[0] * 5, [1] * 4], [[0] * 5, [1] * 4], id="new-speaker"),
    pytest.param([[0] * 5, [1] * 4, [0] * 6], [[0] * 5, [1] * 4, [0] * 6], id="returning-speaker"),
    pytest.param([[0] * 5, [0] * 6 + [1] * 6], [[0] * 5, [0] * 6 + [1] * 6], id="change-inside-utterance"),
    pytest.param([[0] * 5, [1] * 5, [1] * 6 + [0] * 6], [[0] * 5, [1] * 5, [1] * 6 + [0] * 6],
                 id="change-back-to-known-inside-utterance"),
    pytest.param([[0] * 5, [0] * 6 + [1] * 2 + [0] * 6], [[0] * 5, [0] * 14], id="short-change-absorbed"),
    pytest.param([[0] * 5, [1] * 2 + [0] * 8], [[0] * 5, [0] * 10], id="short-start-absorbed"),
    pytest.param([[0] * 5, [2] * 3], [[0] * 5, [1] * 3], id="numbers-in-order-of-appearance"),
])
def test_commit_labels(utterances: list[list[int]], expected: list[list[int]]) -> None:
    tracker = SpeakerTracker(SpeakerOptions())
    got = [tracker.commit(utterance(voices, seed)) for seed, voices in enumerate(utterances)]
    assert got == expected
    assert tracker.speaker_count == len({label for labels in expected for label in labels})


def test_too_short_change_creates_no_speaker() -> None:
    tracker = SpeakerTracker(SpeakerOptions())
    tracker.commit(utterance([0] * 6 + [1] * 2 + [0] * 6))
    assert tracker.speaker_count == 1
    assert tracker.commit(utterance([1] * 6, seed=1)) == [1] * 6


def test_min_segment_s_decides_what_is_short() -> None:
    voices = [0] * 6 + [1] * 2 + [0] * 6  # the other voice holds two windows: 0.8 s of spans
    assert set(SpeakerTracker(SpeakerOptions(min_segment_s=0.5)).commit(utterance(voices))) == {0, 1}
    assert set(SpeakerTracker(SpeakerOptions(min_segment_s=1.0)).commit(utterance(voices))) == {0}


def test_max_speakers_gives_the_nearest_at_the_cap() -> None:
    tracker = SpeakerTracker(SpeakerOptions(max_speakers=2))
    near_b = np.eye(DIM)[1] * 0.6 + np.eye(DIM)[2] * 0.8  # cosine 0.6 with voice 1: a new voice, but closest to 1
    assert tracker.commit(utterance([0] * 4)) == [0] * 4
    assert tracker.commit(utterance([1] * 4, seed=1)) == [1] * 4
    assert tracker.commit(utterance([near_b] * 4, seed=2)) == [1] * 4
    assert tracker.speaker_count == 2


def test_max_speakers_one_keeps_one_label_even_for_a_change_inside() -> None:
    tracker = SpeakerTracker(SpeakerOptions(max_speakers=1))
    assert tracker.commit(utterance([0] * 6 + [1] * 6)) == [0] * 12


def test_label_proposes_without_changing_state() -> None:
    tracker = SpeakerTracker(SpeakerOptions())
    tracker.commit(utterance([0] * 5))
    size, count = tracker.state_size(), tracker.speaker_count
    partial = utterance([1] * 5, seed=3)
    assert tracker.label(partial) == [1] * 5
    assert tracker.label(partial) == [1] * 5
    assert (tracker.state_size(), tracker.speaker_count) == (size, count)
    # Meanwhile speaker 1 is never created, so voice 2 committed next takes the number 1.
    assert tracker.commit(utterance([2] * 5, seed=4)) == [1] * 5
    assert tracker.label(partial) == [2] * 5


def test_label_matches_commit() -> None:
    tracker = SpeakerTracker(SpeakerOptions())
    tracker.commit(utterance([0] * 5))
    windows = utterance([0] * 6 + [1] * 6, seed=1)
    assert tracker.label(windows) == tracker.commit(windows)


def test_empty_utterance_changes_nothing() -> None:
    tracker = SpeakerTracker(SpeakerOptions())
    assert tracker.commit([]) == [] and tracker.label([]) == []
    assert tracker.speaker_count == 0 and tracker.state_size() == 0


def test_memory_bounded_after_10000_commits() -> None:
    rng = np.random.default_rng(7)
    tracker = SpeakerTracker(SpeakerOptions())
    for i in range(10_000):
        windows = [SpeakerWindow(0.0, 1.6, voice(int(rng.integers(0, 100)), rng)),
                   SpeakerWindow(0.4, 2.0, voice(int(rng.integers(0, 100)), rng))]
        labels = tracker.commit(windows)
        assert all(0 <= label < HARD_MAX_SPEAKERS for label in labels)
    assert tracker.speaker_count == HARD_MAX_SPEAKERS
    assert tracker.state_size() <= HARD_MAX_SPEAKERS * (DIM + 1) * 8


def test_centroid_adapts_to_a_drifting_voice() -> None:
    """With a capped count the centroid follows a voice that slowly changes instead of splitting it."""
    tracker = SpeakerTracker(SpeakerOptions(centroid_windows=20))
    rng = np.random.default_rng(0)
    for step in range(60):  # the voice turns from axis 0 to axis 1, 1.5 degrees per utterance
        angle = np.deg2rad(1.5 * step)
        direction = np.cos(angle) * np.eye(DIM)[0] + np.sin(angle) * np.eye(DIM)[1]
        windows = [SpeakerWindow(i * HOP_S, i * HOP_S + WINDOW_S, voice(direction, rng)) for i in range(5)]
        assert tracker.commit(windows) == [0] * 5
    assert tracker.speaker_count == 1


@pytest.mark.parametrize("options", [
    dict(threshold=1.5), dict(max_speakers=0), dict(min_segment_s=-1.0), dict(centroid_windows=0)])
def test_options_are_validated(options: dict) -> None:
    with pytest.raises(ValueError):
        SpeakerOptions(**options)


def test_window_spans_tile_the_utterance() -> None:
    spans = window_spans(utterance([0] * 4))
    assert np.array(spans) == pytest.approx(np.array([(0.0, 1.0), (1.0, 1.4), (1.4, 1.8), (1.8, 2.8)]))


# --- words and utterances ------------------------------------------------------------------------

WORD_WINDOWS = utterance([0] * 3 + [1] * 3)  # spans [0,1] [1,1.4] [1.4,1.8] | [1.8,2.2] [2.2,2.6] [2.6,3.6]
WORD_LABELS = [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("word, speaker", [
    pytest.param((0.1, 0.5), 0, id="inside-first"),
    pytest.param((2.7, 3.0), 1, id="inside-last"),
    pytest.param((1.7, 2.1), 1, id="straddles-mostly-second"),
    pytest.param((1.5, 1.9), 0, id="straddles-mostly-first"),
    pytest.param((1.7, 1.9), 0, id="tie-nearest-centre-earlier"),
    pytest.param((5.0, 5.5), 1, id="after-all-windows"),
    pytest.param((-0.5, -0.1), 0, id="before-all-windows"),
])
def test_speakers_of_words(word: tuple[float, float], speaker: int) -> None:
    assert speakers_of_words([word], WORD_WINDOWS, WORD_LABELS) == [speaker]


def test_speakers_of_words_edges() -> None:
    assert speakers_of_words([], [], []) == []
    with pytest.raises(ValueError):
        speakers_of_words([(0.0, 0.5)], [], [])
    with pytest.raises(ValueError):
        speakers_of_words([(0.0, 0.5)], WORD_WINDOWS, [0])


@pytest.mark.parametrize("labels, speaker", [
    ([0, 0, 1, 1, 1, 1], 1),
    ([0, 0, 0, 1, 1, 1], 0),  # 1.8 s each: a tie goes to the earlier speaker
    ([1, 1, 1, 1, 0, 0], 1),
    ([2, 2, 2, 2, 2, 2], 2),
])
def test_utterance_speaker(labels: list[int], speaker: int) -> None:
    assert utterance_speaker(WORD_WINDOWS, labels) == speaker


def test_utterance_speaker_needs_windows() -> None:
    with pytest.raises(ValueError):
        utterance_speaker([], [])


# --- meetings and their scores -------------------------------------------------------------------

@pytest.mark.parametrize("clip_id, speaker", [
    ("ljspeech_LJ001-0001", "lj"), ("lhotse_ljspeech_LJ002-0020", "lj"), ("dctts_LJ001-0001", None),
    ("mfa_acoustic_corpus", "mfa"), ("mfa_cold_corpus3", "mfa"), ("mfa_whisper2", None), ("mfa_falsetto", None),
    ("mfa_common_voice_en_22058264", None), ("librispeech_2412-153948-0000", "librispeech"),
    ("librivox_0870", "librivox"), ("jfk", "jfk"), ("lib_left", None), ("cards_001", None),
])
def test_speaker_of(clip_id: str, speaker: str | None) -> None:
    assert speaker_of(clip_id) == speaker


FACTS = [ClipFacts(f"ljspeech_LJ001-000{i}", 2.0 + i, "lj") for i in range(3)] + [
    ClipFacts("jfk", 11.0, "jfk"), ClipFacts("librivox_0870", 7.1, "lv"), ClipFacts("dctts_LJ001-0001", 8.0, "x")]


def test_plan_meeting_alternates_and_is_seeded() -> None:
    groups = clips_by_speaker(FACTS)
    assert sorted(groups) == ["jfk", "librivox", "lj"]
    turns = plan_meeting(groups, 3, seed=5, duration_s=200)
    assert turns == plan_meeting(groups, 3, seed=5, duration_s=200)
    assert turns != plan_meeting(groups, 3, seed=6, duration_s=200)
    assert {t.speaker for t in turns} == {"jfk", "librivox", "lj"}
    assert all(a.speaker != b.speaker for a, b in zip(turns, turns[1:]))
    gaps = [b.start_s - a.end_s for a, b in zip(turns, turns[1:])]
    assert all(0 <= g <= 0.15 + 1e-6 or 0.3 - 1e-6 <= g <= 1.5 + 1e-6 for g in gaps)
    assert any(g <= 0.15 for g in gaps) and any(g >= 0.3 for g in gaps)
    assert turns[-1].end_s >= 200 and turns[-2].end_s < 200


def test_plan_meeting_needs_enough_speakers() -> None:
    with pytest.raises(ValueError):
        plan_meeting(clips_by_speaker(FACTS), 4, seed=0)


def test_render_meeting_places_clips() -> None:
    turns = [Turn("a", 0.5, 1.0, "x", ""), Turn("b", 1.5, 2.0, "y", "")]
    audio = render_meeting(turns, {"x": np.ones(8000, np.float32), "y": -np.ones(8000, np.float32)}, seed=0)
    assert audio.dtype == np.float32 and len(audio) == int(2.5 * 16_000)
    assert audio[9000] == pytest.approx(1, abs=1e-3) and audio[25000] == pytest.approx(-1, abs=1e-3)
    assert abs(audio[18000]) < 1e-2


def test_utterances_merge_back_to_back_turns() -> None:
    turns = [Turn("a", 0.5, 2.0, "x", ""), Turn("b", 2.1, 4.0, "y", ""), Turn("a", 5.0, 6.0, "x", "")]
    assert utterances_of(turns) == [(0.5, 4.0), (5.0, 6.0)]


@pytest.mark.parametrize("overlap, mapping", [
    ([[0, 5], [3, 0]], {0: 1, 1: 0}),
    ([[5, 0], [4, 1], [0, 6]], {0: 0, 2: 1}),  # more hypothesis speakers than reference ones
    ([[5, 4, 0]], {0: 0}),  # fewer
    ([[1, 2], [2, 10]], {0: 0, 1: 1}),  # the best total, not the best single pair first
])
def test_best_mapping(overlap: list[list[int]], mapping: dict[int, int]) -> None:
    assert best_mapping(np.array(overlap, dtype=float)) == mapping


REFERENCE = [Turn("A", 0.0, 4.0, "x", ""), Turn("B", 5.0, 7.0, "y", "")]


@pytest.mark.parametrize("hypothesis, accuracy, turn_accuracy, missed, false_alarm, confusion", [
    pytest.param([Segment(7, 0.0, 4.0), Segment(3, 5.0, 7.0)], 1.0, 1.0, 0.0, 0.0, 0.0, id="perfect"),
    pytest.param([Segment(0, 0.0, 4.0), Segment(0, 5.0, 7.0)], 4 / 6, 0.5, 0.0, 0.0, 2 / 6, id="one-label"),
    pytest.param([Segment(0, 0.0, 3.0), Segment(1, 4.5, 7.0)], 5 / 6, 1.0, 1 / 6, 0.5 / 6, 0.0,
                 id="missed-and-false-alarm"),
    pytest.param([Segment(0, 0.0, 3.0), Segment(2, 3.0, 4.0), Segment(1, 5.0, 7.0)], 5 / 6, 1.0, 0.0, 0.0, 1 / 6,
                 id="extra-speaker-is-confusion"),
])
def test_score(hypothesis: list[Segment], accuracy: float, turn_accuracy: float, missed: float,
               false_alarm: float, confusion: float) -> None:
    scores = score(REFERENCE, hypothesis, collar_s=0.0)
    assert scores.accuracy == pytest.approx(accuracy, abs=0.01)
    assert scores.turn_accuracy == pytest.approx(turn_accuracy)
    assert scores.missed == pytest.approx(missed, abs=0.01)
    assert scores.false_alarm == pytest.approx(false_alarm, abs=0.01)
    assert scores.confusion == pytest.approx(confusion, abs=0.01)
    assert scores.der == pytest.approx(missed + false_alarm + confusion, abs=0.01)
    assert scores.hyp_speakers == len({s.label for s in hypothesis})


def test_score_mapping_names_reference_speakers() -> None:
    scores = score(REFERENCE, [Segment(7, 0.0, 4.0), Segment(3, 5.0, 7.0)])
    assert scores.mapping == {"7": "A", "3": "B"}


def test_collar_forgives_boundary_errors() -> None:
    late = [Segment(0, 0.2, 4.0), Segment(1, 5.2, 7.0)]  # each turn found 0.2 s late
    assert score(REFERENCE, late, collar_s=0.0).der == pytest.approx(0.4 / 6, abs=0.01)
    assert score(REFERENCE, late, collar_s=0.25).der == pytest.approx(0.0, abs=1e-9)


def test_score_stream_maps_labels_and_counts_words_and_finals():
    from benchmarks.meetings import Turn, score_stream

    turns = [Turn("ann", 0.0, 2.0, "a", ""), Turn("bob", 2.5, 4.5, "b", "")]

    def final(speaker, start, end, word_speakers):
        step = (end - start) / len(word_speakers)
        words = [{"word": "w", "start_s": start + i * step, "end_s": start + (i + 1) * step, "speaker": s}
                 for i, s in enumerate(word_speakers)]
        return {"text": "w " * len(words), "start_s": start, "end_s": end, "speaker": speaker, "words": words}

    right = score_stream(turns, [final(7, 0.0, 2.0, [7, 7]), final(3, 2.5, 4.5, [3, 3])])
    assert (right["word_accuracy"], right["final_accuracy"], right["hyp_speakers"]) == (1.0, 1.0, 2)
    assert right["mapping"] == {"7": "ann", "3": "bob"}
    # one label for both voices: the second speaker's words and final are wrong
    merged = score_stream(turns, [final(0, 0.0, 2.0, [0, 0]), final(0, 2.5, 4.5, [0, 0])])
    assert (merged["word_accuracy"], merged["final_accuracy"]) == (0.5, 0.5)
    assert score_stream(turns, [])["word_accuracy"] == 0.0


def test_trimmed_keeps_whole_turns_only():
    from benchmarks.meetings import Meeting, Turn, trimmed

    turns = [Turn("a", 0.5, 3.0, "x", ""), Turn("b", 3.5, 9.5, "y", ""), Turn("a", 10.0, 14.0, "z", "")]
    meeting = Meeting("m", turns, np.zeros(16000 * 15, np.float32))
    cut = trimmed(meeting, 11.0)
    assert [t.clip_id for t in cut.turns] == ["x", "y"] and len(cut.audio) == int(10.5 * 16000)
    assert trimmed(meeting, None) is meeting
