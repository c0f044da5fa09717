"""Three real server processes (embedded tiny.en) behind a real HAProxy running deploy/haproxy.cfg.

Real dev clips stream through ``client.StreamingClient`` at twice real time. Checked: sessions spread
over the replicas; a replica killed with SIGKILL mid-stream loses no final (its clients reconnect
through HAProxy and replay); a replica sent SIGTERM answers ``/readyz`` 503, gets no new sessions
from HAProxy and sends its open sessions' finals before it exits.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from client import Disconnected, End, Final, Ready, Reconnected, SpeechStart, StreamingClient

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "haproxy"
HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)
CLIPS = ("lib_left", "librivox_0870", "librivox_0880", "librivox_0890", "goforward", "onetwothree",
         "cards_001", "cards_002", "cards_003")
"""Short English dev clips; each stream is a few of them with pauses between."""
LEAD_S, GAP_S = 0.3, 1.2
SPEED = 2.0
DRAIN_TIMEOUT_S = 60.0
"""Room for the drain's finals on a loaded machine (the default 10 s is for a replica with its own CPUs):
the drain must end by its finals, not by this bound."""
"""Twice real time: the whole module stays within a few minutes on a shared 2-core machine."""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (scripts/setup.sh test installs it)")]


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll processes this test does not control (their logs, HTTP answers): they give no event to wait on."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.1)


def http_status(url: str) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class Replica:
    """``python -m streaming serve --port 0`` as a child process (so it can be killed like a crash)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log_path = ARTIFACTS / f"{name}.log"
        # Admission by capacity: a fixed room for the test's streams (not measured on a shared machine),
        # and no live-load gate, which on a busy CI box would refuse streams at random (not HAProxy's part).
        args = [sys.executable, "-m", "streaming", "serve", "--port", "0", "--threads", "1",
                "--set", f"server.drain_timeout_s={DRAIN_TIMEOUT_S}", "--set", "server.capacity_streams=8",
                "--set", "server.load_admission=false"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_listening(self, timeout_s: float = 150) -> None:
        def listening() -> bool:
            assert self.proc.poll() is None, f"{self.name} exited during start-up:\n{self.log()[-2000:]}"
            found = re.search(r"streaming at ws://127\.0\.0\.1:(\d+)/", self.log())
            self.port = int(found.group(1)) if found else 0
            return bool(found)

        wait_for(listening, timeout_s, f"{self.name} to listen")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def opened_sessions(self) -> list[str]:
        """Session ids this replica admitted, from its log."""
        return re.findall(r"session (\w+) opened", self.log())

    def drain_s(self) -> float | None:
        """From the log's ``draining`` line to its last session closing: how long the drain took."""
        stamps = re.findall(r"^(\S+ \S+) INFO streaming\.server: (draining|session \w+ closed)", self.log(), re.M)
        start = next((t for t, what in stamps if what == "draining"), None)
        if start is None:
            return None
        at = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t in (start, stamps[-1][0])]
        return round((at[1] - at[0]).total_seconds(), 2)

    def readyz(self) -> int | None:
        return http_status(f"http://127.0.0.1:{self.port}/readyz")

    def stop(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


class Proxy:
    """HAProxy running deploy/haproxy.cfg unchanged, its addresses given as environment variables."""

    def __init__(self, replicas: list[Replica]) -> None:
        from tests.test_clients import free_port

        self.port, self.stats_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
        env.update({"ASR_BIND": f"127.0.0.1:{self.port}", "ASR_STATS_BIND": f"127.0.0.1:{self.stats_port}"})
        env.update({f"ASR_SERVER_{i}": f"127.0.0.1:{r.port}" for i, r in enumerate(replicas, 1)})
        self.names = {r.name: f"asr{i}" for i, r in enumerate(replicas, 1)}
        self.log_path = ARTIFACTS / "haproxy.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(REPO / "deploy" / "haproxy.cfg")], env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"

    def answering(self) -> bool:
        assert self.proc.poll() is None, f"haproxy exited: {self.log_path.read_text(errors='replace')[-2000:]}"
        return http_status(f"http://127.0.0.1:{self.stats_port}/") == 200

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of each replica (its stats page as CSV), by replica name."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=5) as reply:
            text = reply.read().decode().lstrip("# ")
        rows = {row["svname"]: row for row in csv.DictReader(io.StringIO(text)) if row["pxname"] == "asr"}
        return {name: rows[server] for name, server in self.names.items()}

    def status(self, replica: Replica) -> str:
        return self.stats()[replica.name]["status"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class Cluster:
    replicas: list[Replica]
    proxy: Proxy
    audio: dict[str, np.ndarray]
    baseline: dict[str, str]
    """Each clip's final text from one replica, streamed alone: what a stream gets without a kill."""
    references: dict[str, str]
    """Each clip's reference transcript (dev.jsonl)."""

    def replica_of(self, session_id: str) -> Replica | None:
        return next((r for r in self.replicas if session_id in r.opened_sessions()), None)

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]


@pytest.fixture(scope="module")
def cluster():
    from streaming.evaluation import dev_clips

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    clips = {c.id: c for c in dev_clips()}
    audio = {cid: clips[cid].load(16_000) for cid in CLIPS}
    replicas = [Replica(f"replica{i}") for i in (1, 2, 3)]  # the three load their models at the same time
    proxy = None
    try:
        for replica in replicas:
            replica.wait_listening()
        proxy = Proxy(replicas)
        wait_for(proxy.answering, 30, "HAProxy's stats page")
        wait_for(lambda: all(s["status"] == "UP" for s in proxy.stats().values()), 30, "HAProxy to see 3 replicas UP")
        baseline = asyncio.run(_baseline([f"ws://127.0.0.1:{r.port}/v1/stream" for r in replicas], audio))
        yield Cluster(replicas, proxy, audio, baseline, {cid: clips[cid].text for cid in CLIPS})
    finally:
        if proxy is not None:
            proxy.stop()
        for replica in replicas:
            replica.stop()


async def _baseline(urls: list[str], audio: dict[str, np.ndarray]) -> dict[str, str]:
    """Each clip alone, straight to a replica (no HAProxy, no kill), as fast as the server reads."""
    from client import transcribe

    async def one(cid: str, url: str) -> str:
        silence = np.zeros(round(GAP_S * 16_000), np.float32)
        result = await transcribe(np.concatenate([silence, audio[cid], silence]), url=url, partials=False,
                                  stop_timeout_s=120)
        return result.text

    async with asyncio.timeout(180):
        texts = await asyncio.gather(*(one(cid, urls[i % len(urls)]) for i, cid in enumerate(CLIPS)))
    return dict(zip(CLIPS, texts))


@dataclass(eq=False)  # a stream is itself: compared by identity, never by its audio
class Stream:
    """One client's stream: clips with pauses, where each clip lies in stream time, what came back."""

    clip_ids: tuple[str, ...]
    audio: np.ndarray
    spans_s: list[tuple[float, float]]
    events: list = field(default_factory=list)
    outcome: str | None = None

    @classmethod
    def of(cls, clip_ids: tuple[str, ...], audio: dict[str, np.ndarray]) -> Stream:
        parts, spans, t = [np.zeros(round(LEAD_S * 16_000), np.float32)], [], LEAD_S
        for cid in clip_ids:
            spans.append((t, t + len(audio[cid]) / 16_000))
            parts += [audio[cid], np.zeros(round(GAP_S * 16_000), np.float32)]
            t = spans[-1][1] + GAP_S
        return cls(clip_ids, np.concatenate(parts), spans)

    @property
    def finals(self) -> list[Final]:
        return [e for e in self.events if isinstance(e, Final)]

    def session_ids(self) -> list[str]:
        return [e.session_id for e in self.events if isinstance(e, Ready | Reconnected)]

    def clips_without_final(self) -> list[str]:
        """Clips no final with text overlaps (in the stream's own time line, across reconnects): lost."""
        said = [(f.start_s, f.end_s) for f in self.finals if f.text.strip()]
        return [cid for cid, (a, b) in zip(self.clip_ids, self.spans_s) if not any(s < b and e > a for s, e in said)]

    def text(self) -> str:
        return " ".join(f.text.strip() for f in self.finals)


async def run_stream(url: str, stream: Stream, on_event: Callable[[Stream, object], None]) -> None:
    """Stream at :data:`SPEED` times real time through the client library (reconnect and replay on)."""
    async with StreamingClient(url, partials=False, stop_timeout_s=120, retry_first_connect=True) as client:
        async def pump() -> None:
            t0, chunk = time.monotonic(), 1600
            for i in range(0, len(stream.audio), chunk):
                await client.send(stream.audio[i:i + chunk])
                await asyncio.sleep(max(0.0, t0 + (i + chunk) / 16_000 / SPEED - time.monotonic()))
            await client.stop()

        pumping = asyncio.create_task(pump())
        async for event in client.events():
            stream.events.append(event)
            on_event(stream, event)
        await pumping
        stream.outcome = client.outcome


def words_off(cluster: Cluster, streams: list[Stream], against: str = "baseline") -> float:
    """Corpus WER of the streams' finals against what the same clips gave without a kill or drain
    (``baseline``) or against the clips' ``references``."""
    from streaming.evaluation import wer

    truth = getattr(cluster, against)
    return wer([" ".join(truth[c] for c in s.clip_ids) for s in streams], [s.text() for s in streams])


def redispatched_handshakes(proxy: Proxy) -> int:
    """Stream handshakes HAProxy's log shows sent to another replica after a failed connect (``+N`` retries)."""
    log = proxy.log_path.read_text(encoding="utf-8", errors="replace")
    return len(re.findall(r"\d+/\d+/\d+/\d+/\+\d+ .*\"GET /v1/stream", log))


def report(name: str, figures: dict) -> None:
    line = f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    with open(ARTIFACTS / "figures.txt", "a", encoding="utf-8") as out:
        out.write(line + "\n")


def current_replica(cluster: Cluster, stream: Stream) -> Replica | None:
    ids = stream.session_ids()
    return cluster.replica_of(ids[-1]) if ids else None


def still_streaming(stream: Stream) -> bool:
    return bool(stream.session_ids()) and not any(isinstance(e, End) for e in stream.events)


async def test_sessions_spread_and_a_killed_replicas_clients_lose_no_final(cluster: Cluster) -> None:
    live = cluster.alive()
    assert len(live) >= 2, "needs two replicas: one to kill, one to take its clients"
    victim = live[1]
    streams = [Stream.of((CLIPS[i % len(CLIPS)], CLIPS[(i + 4) % len(CLIPS)]), cluster.audio) for i in range(12)]
    killed: dict = {}

    def on_event(stream: Stream, event: object) -> None:
        # SIGKILL at the victim's first final: its streams are mid-stream, a clip still to come
        if not killed and isinstance(event, Final) and current_replica(cluster, stream) is victim:
            killed["on"] = [s for s in streams if still_streaming(s) and current_replica(cluster, s) is victim]
            victim.proc.send_signal(signal.SIGKILL)
            killed["at"] = time.monotonic()

    async with asyncio.timeout(240):
        await asyncio.gather(*(run_stream(cluster.proxy.url, s, on_event) for s in streams))
    first = Counter(cluster.replica_of(s.session_ids()[0]).name for s in streams)
    assert set(first) == {r.name for r in live}, first  # leastconn gave each replica some of the 12
    assert killed, "no stream's final came from the victim"
    wait_for(lambda: cluster.proxy.status(victim).startswith("DOWN"), 15, "HAProxy to mark the killed replica DOWN")
    assert all(s.outcome == "ended" for s in streams), [s.outcome for s in streams]
    for stream in streams:
        lost = [e for e in stream.events if isinstance(e, Disconnected)]
        if stream in killed["on"]:
            assert lost and any(isinstance(e, Reconnected) for e in stream.events), stream.events[-5:]
            assert all(cluster.replica_of(sid) not in (victim, None) for sid in stream.session_ids()[1:])
        else:
            assert not lost, (stream.clip_ids, lost)  # the other replicas' sessions did not notice
    lost_finals = sum(len(s.clips_without_final()) for s in streams)
    assert lost_finals == 0, [(s.clip_ids, s.clips_without_final(), s.text()) for s in streams]
    off_killed, off_others = words_off(cluster, killed["on"]), words_off(cluster, [s for s in streams
                                                                                  if s not in killed["on"]])
    report("kill", {"streams_per_replica": dict(sorted(first.items())), "killed": victim.name,
                    "streams_on_killed": len(killed["on"]),
                    "reconnects": sum(isinstance(e, Reconnected) for s in streams for e in s.events),
                    "finals_lost": lost_finals, "wer_vs_no_kill_killed_streams": round(off_killed, 4),
                    "wer_vs_no_kill_other_streams": round(off_others, 4),
                    "wer_vs_references": round(words_off(cluster, streams, "references"), 4),
                    "redispatched_handshakes": redispatched_handshakes(cluster.proxy),
                    "haproxy_stot": {n: s["stot"] for n, s in cluster.proxy.stats().items()}})
    assert off_killed <= 0.1, [(s.text(), [cluster.baseline[c] for c in s.clip_ids]) for s in killed["on"]]


def answers_while_draining(replica: Replica, timeout_s: float = 10) -> list[int]:
    """``/readyz`` answers from now until it says 503 or the process is gone (polled every 10 ms)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while replica.alive and 503 not in seen and time.monotonic() < deadline:
        status = replica.readyz()
        if status is not None:
            seen.append(status)
        time.sleep(0.01)
    return seen


def drained_cleanly(stream: Stream, cut: int) -> bool:
    """From ``cut`` on: the server's ``shutting_down`` closed it, after a final for every utterance it had begun."""
    after = stream.events[cut:]
    ends = [i for i, e in enumerate(after) if isinstance(e, Disconnected)]
    if not ends or after[ends[0]].code != "shutting_down":
        return False
    before = stream.events[:cut + ends[0]]
    last_connection = max(i for i, e in enumerate(before) if isinstance(e, Ready | Reconnected))
    begun = {e.utterance_id for e in before[last_connection:] if isinstance(e, SpeechStart)}
    return begun <= {e.utterance_id for e in before if isinstance(e, Final)}


async def test_a_draining_replica_gets_no_new_sessions_and_finishes_its_finals(cluster: Cluster) -> None:
    live = cluster.alive()
    assert len(live) >= 2, "needs two replicas: one to drain, one to take its clients"
    wait_for(lambda: all(cluster.proxy.status(r) == "UP" for r in live), 30, "HAProxy to see the replicas UP")
    n = len(CLIPS)
    streams = [Stream.of((CLIPS[i], CLIPS[(i + 3) % n], CLIPS[(i + 6) % n]), cluster.audio) for i in range(6)]
    drain: dict = {}

    def on_event(stream: Stream, event: object) -> None:
        # SIGTERM at the first final: the replica that sent it has sessions with audio still to come
        if not drain and isinstance(event, Final) and (victim := current_replica(cluster, stream)) is not None:
            drain.update(victim=victim, opened=victim.opened_sessions())
            drain["cut"] = {id(s): len(s.events) for s in streams
                            if still_streaming(s) and current_replica(cluster, s) is victim}
            victim.proc.send_signal(signal.SIGTERM)
            drain["readyz"] = asyncio.get_running_loop().run_in_executor(None, answers_while_draining, victim)

    async with asyncio.timeout(240):
        await asyncio.gather(*(run_stream(cluster.proxy.url, s, on_event) for s in streams))
    victim: Replica = drain["victim"]
    readyz = await drain["readyz"]
    assert 503 in readyz, readyz  # unready as soon as it drains (200s before it are the signal's delivery)
    exit_code = victim.proc.wait(DRAIN_TIMEOUT_S + 30)
    assert exit_code == 0 and "draining" in victim.log(), victim.log()[-2000:]
    assert victim.opened_sessions() == drain["opened"]  # it admitted nobody after SIGTERM
    wait_for(lambda: not cluster.proxy.status(victim).startswith("UP"), 15, "HAProxy to take the replica out")
    on_victim = [s for s in streams if id(s) in drain["cut"]]
    assert on_victim and all(drained_cleanly(s, drain["cut"][id(s)]) for s in on_victim), \
        [s.events[drain["cut"][id(s)]:] for s in on_victim]
    assert all(s.outcome == "ended" for s in streams), [s.outcome for s in streams]
    assert all(cluster.replica_of(sid) is not victim for s in on_victim for sid in s.session_ids()[1:])
    lost_finals = sum(len(s.clips_without_final()) for s in streams)
    assert lost_finals == 0, [(s.clip_ids, s.clips_without_final(), s.text()) for s in streams]

    # New sessions now: HAProxy sends none to the drained replica (its session count stays put).
    before = cluster.proxy.stats()[victim.name]["stot"]
    fresh = [Stream.of((cid,), cluster.audio) for cid in ("cards_001", "goforward", "onetwothree")]
    async with asyncio.timeout(120):
        await asyncio.gather(*(run_stream(cluster.proxy.url, s, lambda *_: None) for s in fresh))
    assert cluster.proxy.stats()[victim.name]["stot"] == before
    assert all(s.outcome == "ended" and cluster.replica_of(s.session_ids()[0]) in cluster.alive() for s in fresh)
    bounced = sum(isinstance(e, Disconnected) and e.code == "shutting_down" for s in on_victim for e in s.events)
    off = words_off(cluster, streams)
    report("drain", {"drained": victim.name, "streams_on_drained": len(on_victim), "readyz_after_sigterm": readyz,
                     "exit_code": exit_code, "drain_s": victim.drain_s(), "shutting_down_closes": bounced,
                     "reconnects": sum(isinstance(e, Reconnected) for s in streams for e in s.events),
                     "finals_lost": lost_finals, "wer_vs_no_drain": round(off, 4),
                     "haproxy_status": cluster.proxy.status(victim)})
    assert off <= 0.15  # a drain cuts an utterance in two: a word at the cut may be heard differently
