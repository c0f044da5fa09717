"""Live speaker labels: online clustering of voice vectors into speakers 0, 1, 2… for one stream.

Pure logic: window vectors in (``streaming.speaker_encoder.SpeakerWindow``, or any
object with ``start_s``, ``end_s`` and a unit ``vector``), speaker numbers out;
no model, no I/O, no threads. One :class:`SpeakerTracker` per stream, called by
one worker at a time.

How it decides. Each known speaker is a centroid: the running mean of the unit
vectors committed to it, with a capped count so that it keeps following the
voice (microphone, mood) instead of freezing. Within an utterance the windows
are clustered online against the centroids: a window whose best cosine
similarity is under ``threshold`` opens a provisional new speaker (while the cap
allows; at the cap it goes to the nearest). Runs of windows shorter than
``min_segment_s`` are absorbed into the neighbour they resemble more, so a
speaker changes inside an utterance only for a stretch long enough to trust.
Neighbouring runs whose mean vectors are at least ``threshold`` alike are joined
(window-by-window clustering splits one voice too often). Each remaining run is
then decided by its mean vector, which is steadier than any one window: the best
centroid if at least ``threshold`` similar, else a new speaker. :meth:`SpeakerTracker.label` proposes labels without changing anything
(partials: they may still change); :meth:`SpeakerTracker.commit` decides and
updates the centroids (finals: their labels never change afterwards).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["HARD_MAX_SPEAKERS", "SpeakerOptions", "SpeakerTracker", "speakers_of_words", "utterance_speaker",
           "window_spans"]

HARD_MAX_SPEAKERS = 32
"""No stream holds more speakers than this, whatever ``max_speakers`` says: memory stays bounded."""


class Window(Protocol):
    """What the tracker needs of a window (``SpeakerWindow`` is one)."""

    @property
    def start_s(self) -> float: ...
    @property
    def end_s(self) -> float: ...
    @property
    def vector(self) -> np.ndarray: ...


@dataclass(frozen=True)
class SpeakerOptions:
    """How eagerly the tracker tells voices apart (defaults measured by ``benchmarks/meetings.py``)."""

    threshold: float = 0.66
    """Cosine similarity to a speaker's centroid at or above which a voice counts as that speaker.

    Measured on the meeting benchmark: 0.64-0.68 is the plateau; at 0.62 two speakers merge
    in some meetings, from 0.70 one speaker splits in two."""
    max_speakers: int | None = None
    """At most this many speakers per stream (None: up to ``HARD_MAX_SPEAKERS``); past it, the nearest."""
    min_segment_s: float = 1.5
    """A speaker change inside an utterance needs a stretch of at least this long; shorter ones are absorbed.

    2.0 removes more one-off spurious speakers but absorbs short back-to-back turns ("yes, 1.8 s")."""
    centroid_windows: int = 100
    """A centroid averages about this many recent windows (40 s of speech at a 0.4 s hop), so it adapts."""

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], not {self.threshold}")
        if self.max_speakers is not None and self.max_speakers < 1:
            raise ValueError(f"max_speakers must be at least 1, not {self.max_speakers}")
        if self.min_segment_s < 0:
            raise ValueError(f"min_segment_s must not be negative, not {self.min_segment_s}")
        if self.centroid_windows < 1:
            raise ValueError(f"centroid_windows must be at least 1, not {self.centroid_windows}")

    @property
    def speaker_cap(self) -> int:
        return min(self.max_speakers or HARD_MAX_SPEAKERS, HARD_MAX_SPEAKERS)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def window_spans(windows: Sequence[Window]) -> list[tuple[float, float]]:
    """The stretch of time each window speaks for: from the midpoint with its predecessor's centre to the next.

    Windows overlap (1.6 s every 0.4 s), so their own extents would count time several
    times; these spans tile ``[first start, last end]`` without overlap.
    """
    centres = [(w.start_s + w.end_s) / 2 for w in windows]
    spans = []
    for i, window in enumerate(windows):
        start = window.start_s if i == 0 else (centres[i - 1] + centres[i]) / 2
        end = window.end_s if i == len(windows) - 1 else (centres[i] + centres[i + 1]) / 2
        spans.append((start, max(start, end)))
    return spans


def _runs(labels: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(label, first, last + 1)`` of each stretch of equal consecutive labels."""
    runs: list[tuple[int, int, int]] = []
    for i, label in enumerate(labels):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], i + 1)
        else:
            runs.append((label, i, i + 1))
    return runs


class SpeakerTracker:
    """The speakers of one stream so far, as capped running-mean centroids; bounded in memory."""

    def __init__(self, options: SpeakerOptions | None = None, dim: int = 256) -> None:
        self.options = options or SpeakerOptions()
        self._means = np.zeros((0, dim), dtype=np.float64)
        self._counts: list[int] = []

    @property
    def speaker_count(self) -> int:
        return len(self._counts)

    def state_size(self) -> int:
        """Bytes held for the speakers: at most ``HARD_MAX_SPEAKERS`` centroids, however long the stream."""
        return self._means.nbytes + 8 * len(self._counts)

    def label(self, windows: Sequence[Window]) -> list[int]:
        """The speaker of each window as :meth:`commit` would decide now, changing nothing (for partials)."""
        return self._decide(windows)

    def commit(self, windows: Sequence[Window]) -> list[int]:
        """Decide the speaker of each window of a final utterance and learn from it; these labels are for good."""
        labels = self._decide(windows)
        cap = self.options.centroid_windows
        for window, label in zip(windows, labels):
            if label == len(self._counts):  # labels of new speakers are numbered in order of appearance
                self._means = np.vstack([self._means, np.zeros((1, self._means.shape[1]))])
                self._counts.append(0)
            self._counts[label] = min(self._counts[label] + 1, cap)
            mean = self._means[label]
            mean += (_unit(np.asarray(window.vector, dtype=np.float64)) - mean) / self._counts[label]
        return labels

    def _decide(self, windows: Sequence[Window]) -> list[int]:
        if not windows:
            return []
        vectors = _unit(np.stack([np.asarray(w.vector, dtype=np.float64) for w in windows]))
        provisional = self._cluster_windows(vectors)
        durations = [end - start for start, end in window_spans(windows)]
        smoothed = self._absorb_short_runs(provisional, vectors, durations)
        return self._resolve_runs(self._merge_alike_runs(smoothed, vectors, durations), vectors)

    def _cluster_windows(self, vectors: np.ndarray) -> list[int]:
        """Online clustering of one utterance's windows against local copies of the centroids."""
        means = [m.copy() for m in self._means]
        counts = list(self._counts)
        cap = self.options.speaker_cap
        labels = []
        for vector in vectors:
            if means:
                similarities = _unit(np.stack(means)) @ vector
                best = int(np.argmax(similarities))
            if not means or (similarities[best] < self.options.threshold and len(means) < cap):
                means.append(np.zeros_like(vector))
                counts.append(0)
                best = len(means) - 1
            counts[best] = min(counts[best] + 1, self.options.centroid_windows)
            means[best] += (vector - means[best]) / counts[best]
            labels.append(best)
        return labels

    def _absorb_short_runs(self, labels: list[int], vectors: np.ndarray, durations: list[float]) -> list[int]:
        """Merge the shortest run under ``min_segment_s`` into the neighbour it resembles more, until none is left."""
        labels = list(labels)
        while True:
            runs = _runs(labels)
            if len(runs) < 2:
                return labels
            lengths = [sum(durations[first:end]) for _, first, end in runs]
            shortest = int(np.argmin(lengths))
            if lengths[shortest] >= self.options.min_segment_s:
                return labels
            _, first, end = runs[shortest]
            neighbours = [i for i in (shortest - 1, shortest + 1) if 0 <= i < len(runs)]
            run_mean = _unit(vectors[first:end].mean(axis=0))

            def likeness(i: int) -> float:
                _, n_first, n_end = runs[i]
                return float(_unit(vectors[n_first:n_end].mean(axis=0)) @ run_mean)

            target = max(neighbours, key=likeness)
            labels[first:end] = [runs[target][0]] * (end - first)

    def _merge_alike_runs(self, labels: list[int], vectors: np.ndarray, durations: list[float]) -> list[int]:
        """Join neighbouring runs whose mean vectors are at least ``threshold`` alike, most alike first.

        Window-by-window clustering compares a window with a centroid of the few windows
        before it, which is noisy: it splits one voice more often than a comparison of whole
        runs would. The longer run's label wins.
        """
        labels = list(labels)
        while True:
            runs = _runs(labels)
            if len(runs) < 2:
                return labels
            means = [_unit(vectors[first:end].mean(axis=0)) for _, first, end in runs]
            likeness = [float(means[i] @ means[i + 1]) for i in range(len(runs) - 1)]
            pair = int(np.argmax(likeness))
            if likeness[pair] < self.options.threshold:
                return labels
            (left, l_first, l_end), (right, r_first, r_end) = runs[pair], runs[pair + 1]
            if sum(durations[l_first:l_end]) >= sum(durations[r_first:r_end]):
                labels[r_first:r_end] = [left] * (r_end - r_first)
            else:
                labels[l_first:l_end] = [right] * (l_end - l_first)

    def _resolve_runs(self, labels: list[int], vectors: np.ndarray) -> list[int]:
        """Give each run a speaker by its mean vector: a known one when similar enough, else a new number."""
        centroids = list(_unit(self._means))  # known speakers, then the ones this utterance adds
        new_ids: dict[int, int] = {}  # provisional label -> number of the new speaker it became
        resolved = list(labels)
        for provisional, first, end in _runs(labels):
            run_mean = _unit(vectors[first:end].mean(axis=0))
            similarities = np.array([c @ run_mean for c in centroids])
            known = similarities[:self.speaker_count]
            if len(known) and known.max() >= self.options.threshold:
                speaker = int(np.argmax(known))
            elif provisional in new_ids:
                speaker = new_ids[provisional]
            elif len(centroids) < self.options.speaker_cap:
                speaker = new_ids[provisional] = len(centroids)
                centroids.append(run_mean)
            else:  # at the cap: the nearest speaker, known or new
                speaker = int(np.argmax(similarities))
            resolved[first:end] = [speaker] * (end - first)
        return resolved


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def speakers_of_words(words: Sequence[tuple[float, float]], windows: Sequence[Window],
                      labels: Sequence[int]) -> list[int]:
    """The speaker of each word ``(start_s, end_s)`` of an utterance: the label of the window spans it overlaps most.

    Ties go to the window whose centre is nearest the word's; a word outside every window
    takes the nearest window's label. Raises ``ValueError`` when there are no windows.
    """
    if len(windows) != len(labels):
        raise ValueError(f"{len(windows)} windows but {len(labels)} labels")
    if not windows:
        if words:
            raise ValueError("no windows to take the words' speakers from")
        return []
    spans = window_spans(windows)
    centres = [(w.start_s + w.end_s) / 2 for w in windows]
    speakers = []
    for word in words:
        word_centre = (word[0] + word[1]) / 2
        time_by_label: dict[int, float] = {}
        for span, label in zip(spans, labels):
            time_by_label[label] = time_by_label.get(label, 0.0) + _overlap(word, span)
        nearest = min(range(len(windows)), key=lambda i: abs(centres[i] - word_centre))
        most = max(time_by_label.values())
        if most <= 0:
            speakers.append(labels[nearest])
            continue
        leaders = {label for label, t in time_by_label.items() if t >= most - 1e-9}
        if labels[nearest] in leaders:
            speakers.append(labels[nearest])
        else:  # the nearest window is not among the leaders: the leader with the nearest window wins
            candidates = [i for i in range(len(windows)) if labels[i] in leaders]
            speakers.append(labels[min(candidates, key=lambda i: abs(centres[i] - word_centre))])
    return speakers


def utterance_speaker(windows: Sequence[Window], labels: Sequence[int]) -> int:
    """The speaker who covers most of the utterance's time (ties: the earliest). ``ValueError`` without windows."""
    if len(windows) != len(labels):
        raise ValueError(f"{len(windows)} windows but {len(labels)} labels")
    if not windows:
        raise ValueError("no windows to take the utterance's speaker from")
    time_by_label: dict[int, float] = {}
    for (start, end), label in zip(window_spans(windows), labels):
        time_by_label[label] = time_by_label.get(label, 0.0) + (end - start)
    return max(time_by_label, key=lambda label: (time_by_label[label], -labels.index(label)))
