"""Subtitle formatting, parsing and the cue timeline (pure, fast)."""

from __future__ import annotations

import pytest

from client.subtitles import (
    Cue,
    CueTimeline,
    SubtitleWriter,
    format_cue,
    format_subtitles,
    format_timestamp,
    parse_subtitles,
    parse_timestamp,
    wrap_text,
)


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (1.2345, "00:00:01,234", "00:00:01.234"),
        (61.5, "00:01:01,500", "00:01:01.500"),
        (3600 + 62.999, "01:01:02,999", "01:01:02.999"),
        (59.9996, "00:01:00,000", "00:01:00.000"),  # rounding carries into the minutes
        (-0.3, "00:00:00,000", "00:00:00.000"),  # never negative
    ],
)
def test_timestamps(seconds: float, srt: str, vtt: str) -> None:
    assert format_timestamp(seconds, "srt") == srt
    assert format_timestamp(seconds, "vtt") == vtt
    assert parse_timestamp(srt) == pytest.approx(max(0.0, round(seconds, 3)), abs=1e-3)


def test_parse_timestamp_accepts_vtt_short_form_and_rejects_garbage() -> None:
    assert parse_timestamp("01:02.500") == pytest.approx(62.5)
    with pytest.raises(ValueError):
        parse_timestamp("1:2:3")


def test_srt_cue_layout() -> None:
    assert format_cue(3, Cue(1.0, 2.5, "hello world"), "srt") == "3\n00:00:01,000 --> 00:00:02,500\nhello world\n\n"


def test_vtt_document_and_escaping() -> None:
    doc = format_subtitles([Cue(0, 1, "a < b & c --> d")], "vtt")
    assert doc.startswith("WEBVTT\n\n")
    assert "a &lt; b &amp; c --&gt; d" in doc
    assert parse_subtitles(doc, "vtt") == [Cue(0, 1, "a < b & c --> d")]


def test_long_text_wraps_without_blank_lines() -> None:
    text = "and so my fellow americans ask not what your country can do for you ask what you can do"
    wrapped = wrap_text(text)
    assert all(0 < len(line) <= 42 for line in wrapped.split("\n"))
    assert " ".join(wrapped.split("\n")) == text
    assert wrap_text("  \n ") == ""


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_round_trip(fmt: str) -> None:
    cues = [Cue(0.5, 2.0, "first line"), Cue(2.0, 7.25, "second " * 12 + "end"), Cue(10, 11, "third")]
    parsed = parse_subtitles(format_subtitles(cues, fmt), fmt)
    assert [c.text for c in parsed] == [" ".join(c.text.split()) for c in cues]
    assert [(c.start_s, c.end_s) for c in parsed] == [(c.start_s, c.end_s) for c in cues]


@pytest.mark.parametrize(
    ("document", "fmt"),
    [
        ("1\n00:00:00,000 --> 00:00:01,000\nok\n\n3\n00:00:01,000 --> 00:00:02,000\nskipped index\n", "srt"),
        ("1\n00:00:00,000 -> 00:00:01,000\nbad arrow\n", "srt"),
        ("1\n00:00:02,000 --> 00:00:01,000\nbackwards\n", "srt"),
        ("1\n00:00:00,000 --> 00:00:01,000\n", "srt"),
        ("1\n00:00:00.000 --> 00:00:01.000\nno header\n", "vtt"),
    ],
)
def test_parser_rejects_malformed(document: str, fmt: str) -> None:
    with pytest.raises(ValueError):
        parse_subtitles(document, fmt)


def test_timeline_makes_cues_monotonic_and_readable() -> None:
    timeline = CueTimeline(min_cue_s=0.5)
    a = timeline.add(1.0, 3.0, "one")
    b = timeline.add(2.5, 2.6, "two")  # overlaps the previous cue and is too short
    c = timeline.add(9.0, 10.0, "  ")  # empty finals give no cue
    d = timeline.add(4.0, 6.0, " three  four ")
    assert a == Cue(1.0, 3.0, "one")
    assert b == Cue(3.0, 3.5, "two")
    assert c is None
    assert d == Cue(4.0, 6.0, "three four")


@pytest.mark.parametrize("suffix", ["srt", "vtt"])
def test_writer_file_is_valid_after_every_cue(tmp_path, suffix: str) -> None:
    path = tmp_path / f"out.{suffix}"
    with SubtitleWriter(path) as writer:
        assert writer.fmt == suffix
        assert parse_subtitles(path.read_text(), suffix) == []
        writer.add(0.0, 1.0, "hello")
        # Flushed: readable before the writer is closed.
        assert [c.text for c in parse_subtitles(path.read_text(), suffix)] == ["hello"]
        writer.add(0.8, 2.0, "world")
        writer.add(3.0, 4.0, "")
    cues = parse_subtitles(path.read_text(), suffix)
    assert [c.text for c in cues] == ["hello", "world"]
    assert cues[1].start_s >= cues[0].end_s
