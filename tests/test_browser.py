"""The browser demo in headless Chromium, with a wav file as the microphone."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from client.subtitles import parse_subtitles
from tests.test_clients import TURN_TIMELINES

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CLIP_IDS = ["jfk", "lib_left", "librivox_0870", "goforward"]
LEAD_S, GAP_S, TAIL_S = 1.0, 1.5, 8.0
# Chromium's fake capture device converts the file to the capture format itself; 48 kHz is its
# native rate, so the file plays unchanged, and the page still declares the AudioContext's real rate.
FILE_RATE_HZ = 48_000


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> tuple[Path, list[tuple[str, float, float]]]:
    """A few English dev clips joined by silence (Chromium loops the file: the tail keeps loops apart)."""
    from streaming.evaluation import dev_clips

    clips = {c.id: c for c in dev_clips()}
    parts = [np.zeros(round(LEAD_S * FILE_RATE_HZ), np.float32)]
    spans, t = [], LEAD_S
    for clip_id in CLIP_IDS:
        audio = clips[clip_id].load(FILE_RATE_HZ)
        spans.append((clips[clip_id].text, t, t + len(audio) / FILE_RATE_HZ))
        parts += [audio, np.zeros(round(GAP_S * FILE_RATE_HZ), np.float32)]
        t += len(audio) / FILE_RATE_HZ + GAP_S
    parts.append(np.zeros(round(TAIL_S * FILE_RATE_HZ), np.float32))
    path = tmp_path_factory.mktemp("browser") / "speech-48k.wav"
    sf.write(path, np.concatenate(parts), FILE_RATE_HZ, subtype="PCM_16")
    return path, spans


@pytest.fixture(scope="module")
def browser(speech_wav):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    wav, _ = speech_wav
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
            # The overlay starts by itself, as in an OBS browser source (no click to unlock audio).
            "--autoplay-policy=no-user-gesture-required"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)  # fresh temp profile
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def http_url():
    from tests.helpers import running_server

    with running_server() as ws_url:
        yield ws_url.replace("ws://", "http://").removesuffix("/v1/stream")


def _stats(page) -> dict:
    return page.evaluate("JSON.parse(JSON.stringify(window.captionStats))")


def test_live_captions_transcript_and_downloads(browser, http_url, speech_wav, tmp_path) -> None:
    from streaming.evaluation import wer

    wav, spans = speech_wav
    file_s = sf.info(str(wav)).duration
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(http_url + "/")
    page.wait_for_function("document.getElementById('model').textContent.length > 0")  # /v1/info loaded
    assert page.is_disabled("#window")  # tiny.en has no attention window
    from streaming.protocol import protocol_facts

    loaded = _stats(page)  # the retryable codes are the server's, read from /v1/info
    assert loaded["protocolKnown"] and loaded["retryableCodes"] == sorted(protocol_facts()["retryable_codes"])
    page.click("#start")
    page.wait_for_function("window.captionStats.state === 'live'", timeout=20_000)

    # A partial is shown differently from finals (grey italic) while an utterance is open.
    page.wait_for_selector("#caption-partial:not([hidden])", timeout=30_000)
    style = page.eval_on_selector("#caption-partial", "e => getComputedStyle(e).fontStyle")
    assert style == "italic"
    page.screenshot(path=str(ARTIFACTS / "page-live.png"))

    # Wait for the final of the last clip of the first loop, then stop.
    last_start_s = spans[-1][1]
    page.wait_for_function(
        "(() => { const s = window.captionStats; return s.lastFinalEndS !== null && "
        f"s.lastFinalEndS >= {last_start_s}; }})()", timeout=90_000)
    page.click("#stop")
    page.wait_for_function("window.captionStats.state === 'idle'", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "page.png"))
    stats = _stats(page)

    # Partials come before the final of their utterance, and most utterances have them.
    seen_partial: dict[int, float] = {}
    finals_at: dict[int, float] = {}
    for entry in stats["log"]:
        if entry["type"] == "partial":
            assert entry["utteranceId"] not in finals_at, "partial after its final"
            seen_partial.setdefault(entry["utteranceId"], entry["atMs"])
        elif entry["type"] == "final":
            finals_at[entry["utteranceId"]] = entry["atMs"]
    assert finals_at and len(seen_partial) >= len(finals_at) / 2
    assert min(seen_partial.values()) < min(finals_at.values())

    # Downloads: TXT, SRT and VTT of the same finals.
    files = {}
    for kind in ("txt", "srt", "vtt"):
        with page.expect_download() as info:
            page.click(f"#download-{kind}")
        target = tmp_path / f"captions.{kind}"
        info.value.save_as(target)
        shutil.copy(target, ARTIFACTS / f"browser-captions.{kind}")
        files[kind] = target.read_text(encoding="utf-8")
    srt_cues, vtt_cues = parse_subtitles(files["srt"], "srt"), parse_subtitles(files["vtt"], "vtt")
    assert [c.text for c in srt_cues] == [c.text for c in vtt_cues] == files["txt"].splitlines()
    for a, b in zip(srt_cues, srt_cues[1:]):
        assert a.start_s < a.end_s <= b.start_s < b.end_s

    # Final captions of the first loop of the file match the reference.
    first_loop = [c.text for c in srt_cues if c.start_s < file_s - TAIL_S]
    hypothesis = " ".join(first_loop)
    reference = " ".join(text for text, _, _ in spans)
    error = wer([reference], [hypothesis])
    summary = {
        "wer": round(error, 3), "sample_rate": stats["sampleRate"],
        "first_partial_latency_s": stats["firstPartialLatenciesS"], "final_latency_s": stats["finalLatenciesS"],
        "hypothesis": hypothesis,
    }
    (ARTIFACTS / "browser.json").write_text(json.dumps(summary, indent=1))
    assert error <= 0.15, summary
    assert stats["sampleRate"] and stats["firstPartialLatencyS"] and stats["finalLatencyS"]
    assert not errors, errors
    page.close()


def test_overlay_shows_large_high_contrast_captions(browser, http_url) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(http_url + "/overlay")  # starts by itself
    page.wait_for_function("document.querySelectorAll('#caption-finals .caption-line').length > 0", timeout=60_000)
    look = page.evaluate("""(() => {
        const line = document.querySelector('#caption-finals .caption-line');
        const s = getComputedStyle(line), body = getComputedStyle(document.body);
        const hidden = ['.controls', '.transcript-panel'].map(q => getComputedStyle(document.querySelector(q)).display);
        return {fontSize: parseFloat(s.fontSize), color: s.color, stroke: s.webkitTextStrokeColor,
                background: body.backgroundColor, hidden, lines: document.querySelectorAll('.caption-line').length,
                visible: line.getBoundingClientRect().height > 0};
    })()""")
    page.screenshot(path=str(ARTIFACTS / "overlay.png"), omit_background=True)
    assert look["visible"] and look["fontSize"] >= 28
    assert look["color"] == "rgb(255, 255, 255)" and look["stroke"] == "rgb(0, 0, 0)"
    assert look["background"] in ("rgba(0, 0, 0, 0)", "transparent")
    assert look["hidden"] == ["none", "none"]
    assert look["lines"] <= 2
    assert not errors, errors
    page.close()


NODE = shutil.which("node")


def _node(script: str, module_name: str = "captions.js") -> str:
    """Run an ES module snippet that imports web/<module_name> as ``c`` (the page's pure helpers)."""
    if NODE is None:
        pytest.skip("node is not installed")
    module = (REPO / "web" / module_name).as_uri()
    proc = subprocess.run([NODE, "--input-type=module"], input=f"import * as c from {json.dumps(module)};\n{script}",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_browser_pcm16_is_bit_for_bit_the_shared_conversion() -> None:
    from streaming.audio import float_to_pcm16

    rng = np.random.default_rng(7)
    ties = (np.arange(-40, 40, dtype=np.float32) + 0.5) / np.float32(32767)  # halfway cases both ways
    samples = np.concatenate([rng.uniform(-1.2, 1.2, 20_000), ties, [0.0, 1.0, -1.0, 0.5, -0.5]]).astype(np.float32)
    got = json.loads(_node(f"const x = new Float32Array({json.dumps(samples.tolist())});\n"
                           "console.log(JSON.stringify(Array.from(c.floatToInt16(x))));"))
    assert got == np.frombuffer(float_to_pcm16(samples), "<i2").tolist()


def test_browser_reads_the_wire_facts_of_v1_info_or_falls_back_safely() -> None:
    from streaming.protocol import protocol_facts

    info = json.dumps({"protocol": protocol_facts()})
    out = json.loads(_node(f"""
        const known = c.protocolFacts({info}), none = c.protocolFacts(null), old = c.protocolFacts({{protocol: 1}});
        const rates = (f) => [4000, 44100, 96000].map((hz) => c.captureRateHz(hz, f));
        const view = (f) => ({{known: f.known, retryable: [...f.retryableCodes].sort(), rates: rates(f)}});
        console.log(JSON.stringify([view(known), view(none), view(old)]));"""))
    facts = protocol_facts()
    assert out[0] == {"known": True, "retryable": sorted(facts["retryable_codes"]),
                      "rates": [facts["min_sample_rate_hz"], 44100, facts["max_sample_rate_hz"]]}
    # Without the facts (no /v1/info, or an older server): retry no error, capture at 16 kHz.
    assert out[1] == out[2] == {"known": False, "retryable": [], "rates": [16000, 16000, 16000]}


# --- turn taking ----------------------------------------------------------------------------------------


def test_browser_turn_rules_follow_the_same_table_as_the_python_clients() -> None:
    timelines = {name: [message for message, _, _ in steps] for name, steps in TURN_TIMELINES.items()}
    got = json.loads(_node(f"""
        const out = {{}};
        for (const [name, messages] of Object.entries({json.dumps(timelines)})) {{
          let turn = c.IDLE;
          out[name] = messages.map((m) => {{ turn = c.nextTurn(turn, m); return [turn.state, turn.eagerText]; }});
        }}
        console.log(JSON.stringify(out));""", "turns.js"))
    assert got == {name: [[state, eager] for _, state, eager in steps] for name, steps in TURN_TIMELINES.items()}


def _turn(page) -> tuple[str, str]:
    return tuple(page.eval_on_selector("#turn", "e => [e.dataset.turn, e.textContent]"))


def test_turn_indicator_reaches_your_turn_after_a_final_in_silence_mode(browser, http_url) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sent: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)
                                          if isinstance(payload, str) else None))
    page.goto(http_url + "/")
    page.wait_for_function("!document.getElementById('turn-detection').disabled")  # /v1/info loaded
    assert _turn(page) == ("idle", "idle")
    # Eagerness and eager text belong to smart mode only.
    page.select_option("#turn-detection", "smart")
    assert not page.is_disabled("#turn-eagerness") and not page.is_disabled("#eager")
    page.select_option("#turn-detection", "silence")
    assert page.is_disabled("#turn-eagerness") and page.is_disabled("#eager")
    page.click("#start")
    page.wait_for_function("window.captionStats.turn === 'speaking'", timeout=30_000)
    page.wait_for_function("window.captionStats.finals > 0 && window.captionStats.turn === 'your_turn'",
                           timeout=60_000)
    assert _turn(page) == ("your_turn", "your turn")
    page.screenshot(path=str(ARTIFACTS / "page-your-turn.png"))
    page.click("#stop")
    page.wait_for_function("window.captionStats.state === 'idle'", timeout=30_000)
    start = json.loads(sent[0])
    assert start["type"] == "start" and start["turn_detection"] == "silence"
    assert "turn_eagerness" not in start and "eager_end_of_turn" not in start
    # The first turn went speaking -> thinking (speech_end, final owed) -> your turn.
    states = [t["state"] for t in _stats(page)["turns"]]
    first = states.index("your_turn")
    assert states[0] == "speaking" and states[first - 1] == "thinking", states
    assert states[-1] == "idle"  # after the end
    assert not errors, errors
    page.close()


def test_eager_text_is_tentative_and_withdrawn_on_turn_resumed(browser, http_url) -> None:
    """Smart mode with eager text, the server scripted (the real one's smart mode is not needed)."""
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    received: list[dict] = []
    sockets = []
    seq = iter(range(1000))

    def send(socket, kind: str, **fields) -> None:
        socket.send(json.dumps({"type": kind, "seq": next(seq), **fields}))

    def on_socket(socket) -> None:
        sockets.append(socket)

        def on_message(frame) -> None:
            if not isinstance(frame, str):
                return  # audio
            message = json.loads(frame)
            received.append(message)
            if message["type"] == "start":
                send(socket, "ready", session_id="scripted", model="scripted", protocol=1,
                     options={"turn_detection": "smart"})
            elif message["type"] == "stop":
                send(socket, "end", utterances=1, audio_s=4.0)

        socket.on_message(on_message)

    page.route_web_socket(re.compile(r"/v1/stream"), on_socket)
    page.goto(http_url + "/?turn_detection=smart&turn_eagerness=high&eager_end_of_turn=1")
    page.wait_for_function("!document.getElementById('turn-eagerness').disabled")
    assert page.is_checked("#eager")
    page.click("#start")
    page.wait_for_function("window.captionStats.state === 'live'", timeout=20_000)
    start = received[0]
    assert (start["type"], start["turn_detection"], start["turn_eagerness"], start["eager_end_of_turn"]) == (
        "start", "smart", "high", True)
    ws = sockets[0]

    def step(kind: str, until: str, **fields) -> None:
        send(ws, kind, **fields)
        page.wait_for_function(until, timeout=10_000)

    shown = "document.getElementById('turn').dataset.turn === '{}'".format
    eager_shown = "!document.getElementById('caption-eager').hidden"
    step("speech_start", shown("speaking"), utterance_id=0, start_s=0.5)
    step("partial", "document.getElementById('caption-partial').textContent === 'I would like'",
         utterance_id=0, text="I would like", stable_text="", start_s=0.5, end_s=1.5)
    step("eager_end_of_turn", f"{shown('thinking')} && {eager_shown}", utterance_id=0, text="I would like",
         start_s=0.5, end_s=1.6)
    look = page.eval_on_selector("#caption-eager", """e => ({
        text: e.textContent, style: getComputedStyle(e).fontStyle, line: getComputedStyle(e).textDecorationStyle,
        partialHidden: document.getElementById('caption-partial').hidden})""")
    assert look == {"text": "I would like", "style": "italic", "line": "dotted", "partialHidden": True}
    page.screenshot(path=str(ARTIFACTS / "page-eager.png"))
    # The user goes on: the eager text is taken back, the partial is back.
    step("turn_resumed", f"{shown('speaking')} && !({eager_shown})", utterance_id=0, at_s=2.0)
    assert not page.is_hidden("#caption-partial")
    step("partial", "document.getElementById('caption-partial').textContent === 'I would like the soup'",
         utterance_id=0, text="I would like the soup", stable_text="I would like", start_s=0.5, end_s=2.6)
    step("eager_end_of_turn", f"{shown('thinking')} && {eager_shown}", utterance_id=0,
         text="I would like the soup", start_s=0.5, end_s=2.7)
    step("speech_end", "window.captionStats.log.some(e => e.type === 'speech_end')", utterance_id=0, end_s=2.7,
         reason="end_of_turn")
    assert _turn(page) == ("thinking", "thinking") and not page.is_hidden("#caption-eager")
    # The final replaces the eager text.
    step("final", shown("your_turn"), utterance_id=0, text="I would like the soup", language="en", start_s=0.5,
         end_s=2.7, reason="end_of_turn")
    assert page.is_hidden("#caption-eager") and page.is_hidden("#caption-partial")
    assert page.inner_text("#caption-finals") == "I would like the soup"
    assert page.inner_text("#transcript").endswith("I would like the soup")
    states = [(t["state"], t["eagerText"]) for t in _stats(page)["turns"]]
    assert states == [("speaking", ""), ("thinking", "I would like"), ("speaking", ""),
                      ("thinking", "I would like the soup"), ("your_turn", "")]
    page.click("#stop")
    page.wait_for_function("window.captionStats.state === 'idle'", timeout=30_000)
    assert _turn(page) == ("idle", "idle")
    assert not errors, errors
    page.close()
