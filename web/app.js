// The browser demo: microphone → AudioWorklet → CaptionStream → live captions and transcript.
// Overlay mode (/overlay or ?overlay=1) shows only the last caption lines, for OBS browser sources.

import {
  CaptionState, captureRateHz, formatSubtitles, formatTranscript, infoUrl, protocolFacts, streamUrl,
} from "./captions.js";
import { CaptionStream } from "./stream.js";
import { IDLE, TURN_LABELS, nextTurn } from "./turns.js";

const params = new URLSearchParams(location.search);
const overlay = location.pathname.replace(/\/+$/, "") === "/overlay" || params.get("overlay") === "1";
const $ = (id) => document.getElementById(id);

const LANGUAGES = ["en", "fr", "de", "es", "it", "pt", "nl", "ru", "zh", "ja", "ko", "ar", "hi"];
const OVERLAY_IDLE_MS = 12000; // overlay captions fade out after this long without speech
// Used when /v1/info does not list a start field's choices. The demo offers no "manual" mode:
// only Stop would end an utterance.
const TURN_DETECTIONS = ["silence", "smart"];
const TURN_EAGERNESS = ["low", "medium", "high", "auto"];

/** Latest measurements, for tests and curious users (see README). */
const stats = {
  sampleRate: null,
  firstPartialLatencyS: null,
  finalLatencyS: null,
  lastFinalEndS: null,
  firstPartialLatenciesS: [],
  finalLatenciesS: [],
  partials: 0,
  finals: 0,
  reconnects: 0,
  protocolKnown: false, // whether /v1/info gave the wire facts (else: no error is retried, 16 kHz capture)
  retryableCodes: [],
  state: "idle",
  turn: "idle", // the turn indicator: idle / speaking / thinking / your_turn (web/turns.js)
  turns: [], // each change of the indicator: {state, utteranceId, eagerText, reason}
  log: [],
};
window.captionStats = stats;

const captions = new CaptionState();
let info = null;
let facts = protocolFacts(null); // the wire facts of /v1/info once loaded (retryable codes, rate bounds)
let turn = IDLE; // whose turn it is (web/turns.js)
let turnFacts = { supported: false, defaultMode: null }; // from /v1/info: may start set turn_detection?
let capture = null; // {context, stream, node, source}
let stream = null;
let idleTimer = null;
let infoLoaded = Promise.resolve();

// --- rendering --------------------------------------------------------------------------------

function setStatus(state, detail) {
  stats.state = state;
  const el = $("status");
  el.dataset.state = state;
  el.textContent = detail ? `${state}: ${detail}` : state;
  const running = state === "live" || state === "connecting" || state === "reconnecting";
  $("start").disabled = running || state === "stopping";
  $("stop").disabled = !running;
}

function renderCaptions() {
  const maxLines = overlay ? 2 : 3;
  // An eager end of turn stands in for the partial until the final replaces it (or speech resumes).
  const tentative = turn.eagerText || captions.partial;
  const finalsShown = captions.finals.slice(-(tentative ? maxLines - 1 : maxLines));
  const finalsEl = $("caption-finals");
  finalsEl.replaceChildren(...finalsShown.map((cue) => {
    const line = document.createElement("div");
    line.className = "caption-line final";
    line.textContent = cue.text;
    return line;
  }));
  const partialEl = $("caption-partial");
  partialEl.textContent = turn.eagerText ? "" : captions.partial;
  partialEl.hidden = Boolean(turn.eagerText) || !captions.partial;
  const eagerEl = $("caption-eager");
  eagerEl.textContent = turn.eagerText;
  eagerEl.hidden = !turn.eagerText;
  $("caption-hint").hidden = captions.finals.length > 0 || Boolean(tentative);
  $("captions").classList.remove("idle");
  if (overlay) {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => $("captions").classList.add("idle"), OVERLAY_IDLE_MS);
  }
}

function renderTurn() {
  const el = $("turn");
  el.dataset.turn = turn.state;
  el.textContent = TURN_LABELS[turn.state];
}

/** Move the indicator; returns whether anything shown changed. */
function applyTurn(next) {
  if (next === turn) return false;
  const changed = next.state !== turn.state || next.eagerText !== turn.eagerText;
  turn = next;
  if (changed) {
    stats.turn = turn.state;
    stats.turns.push({ ...turn });
    if (stats.turns.length > 2000) stats.turns.splice(0, 500);
    renderTurn();
  }
  return changed;
}

function appendTranscript(cue) {
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = formatClock(cue.startS);
  const text = document.createElement("span");
  text.textContent = cue.text;
  item.append(time, text);
  const list = $("transcript");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(item);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function formatClock(seconds) {
  const s = Math.floor(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function renderLatency() {
  const fmt = (v) => (v === null ? "–" : `${v.toFixed(2)} s`);
  $("latency").textContent = `latency: first partial ${fmt(stats.firstPartialLatencyS)} · final ${fmt(stats.finalLatencyS)}`;
}

function onEvent(event, offsetS) {
  const turnChanged = applyTurn(nextTurn(turn, event));
  if (event.type === "ready") {
    $("model").textContent = event.model || "";
    const mode = event.options && event.options.turn_detection;
    $("turn").title = mode ? `Whose turn it is (turn detection: ${mode})` : "Whose turn it is";
    return;
  }
  const before = captions.finals.length;
  if (captions.apply(event, offsetS)) {
    if (captions.finals.length > before) {
      const cue = captions.finals[captions.finals.length - 1];
      stats.lastFinalEndS = cue.endS;
      appendTranscript(cue);
    }
    renderCaptions();
    renderLatency();
  } else if (turnChanged) {
    renderCaptions();
  }
}

// --- settings ---------------------------------------------------------------------------------

async function loadInfo() {
  try {
    const response = await fetch(infoUrl(location));
    info = await response.json();
    facts = protocolFacts(info);
    stats.protocolKnown = facts.known;
    stats.retryableCodes = [...facts.retryableCodes].sort();
  } catch (err) {
    setStatus("error", `cannot reach the server (${err.message})`);
    return;
  }
  $("model").textContent = info.model || "";
  const language = $("language");
  const defaultLanguage = info.defaults && info.defaults.language;
  const choices = info.multilingual ? LANGUAGES : ["en"];
  if (info.multilingual) language.options[0].textContent = "Detect / server default";
  for (const code of choices) language.append(new Option(code, code));
  if (params.get("language")) language.value = params.get("language");
  else if (defaultLanguage) language.value = defaultLanguage;

  const windowSelect = $("window");
  const range = (info.start_fields && info.start_fields.window_s) || { min: 1, max: 8 };
  for (let s = range.min || 1; s <= (range.max || 8); s++) windowSelect.append(new Option(`${s} s`, String(s)));
  windowSelect.disabled = !info.supports_window;
  windowSelect.title = info.supports_window
    ? "Encoder attention window: smaller = lower latency, larger = more context"
    : `${info.model} has no attention-window setting`;
  if (info.supports_window && params.get("window_s")) windowSelect.value = params.get("window_s");
  loadTurnControls(info);
}

/** The choices of a start field as /v1/info lists them, else `fallback`. */
function fieldChoices(info, name, fallback) {
  const field = info.start_fields && info.start_fields[name];
  return field && Array.isArray(field.choices) ? field.choices : fallback;
}

function loadTurnControls(info) {
  const fields = info.start_fields || {};
  const defaults = info.defaults || {};
  turnFacts = { supported: "turn_detection" in fields, defaultMode: defaults.turn_detection || null };
  const mode = $("turn-detection");
  if (turnFacts.defaultMode) mode.options[0].textContent = `Server default (${turnFacts.defaultMode})`;
  for (const m of fieldChoices(info, "turn_detection", TURN_DETECTIONS)) {
    if (m !== "manual") mode.append(new Option(m, m));
  }
  const eagerness = $("turn-eagerness");
  if (defaults.turn_eagerness) eagerness.options[0].textContent = `Server default (${defaults.turn_eagerness})`;
  for (const e of fieldChoices(info, "turn_eagerness", TURN_EAGERNESS)) eagerness.append(new Option(e, e));
  const pick = (select, value) => {
    if (value && [...select.options].some((o) => o.value === value)) select.value = value;
  };
  pick(mode, params.get("turn_detection"));
  pick(eagerness, params.get("turn_eagerness"));
  $("eager").checked = ["1", "true"].includes(params.get("eager_end_of_turn"));
  mode.disabled = !turnFacts.supported;
  mode.title = turnFacts.supported ? "How the server decides that you finished your turn"
    : "this server has no turn detection setting";
  syncTurnControls();
}

/** Eagerness and eager text apply to smart turn detection only. */
function syncTurnControls() {
  const value = $("turn-detection").value;
  const smart = turnFacts.supported && (value === "smart" || (value === "" && turnFacts.defaultMode === "smart"));
  $("turn-eagerness").disabled = !smart;
  $("eager").disabled = !smart;
}

async function listDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const select = $("device");
  const current = select.value || params.get("device") || "";
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
  select.replaceChildren(new Option("Default microphone", ""));
  devices.forEach((d, i) => {
    if (d.deviceId && d.deviceId !== "default") select.append(new Option(d.label || `Microphone ${i + 1}`, d.deviceId));
  });
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

function startOptions() {
  const options = {};
  const language = $("language").value;
  if (language) options.language = language;
  const windowS = $("window").value;
  if (windowS && !$("window").disabled) options.window_s = Number(windowS);
  const mode = $("turn-detection");
  if (mode.value && !mode.disabled) options.turn_detection = mode.value;
  const eagerness = $("turn-eagerness");
  if (eagerness.value && !eagerness.disabled) options.turn_eagerness = eagerness.value;
  if ($("eager").checked && !$("eager").disabled) options.eager_end_of_turn = true;
  return options;
}

// --- capture ----------------------------------------------------------------------------------

async function openCapture(deviceId) {
  const media = await navigator.mediaDevices.getUserMedia({
    audio: {
      deviceId: deviceId ? { exact: deviceId } : undefined,
      channelCount: 1,
      // Raw audio: the server has its own VAD, and browser processing hurts recognition.
      echoCancellation: false,
      noiseSuppression: false,
      autoGainControl: false,
    },
  });
  let context = new AudioContext();
  const rate = captureRateHz(context.sampleRate, facts);
  if (rate !== context.sampleRate) {
    // A rate the protocol does not take (see /v1/info): let the browser resample.
    await context.close();
    context = new AudioContext({ sampleRate: rate });
  }
  await context.audioWorklet.addModule("/capture-worklet.js");
  const source = context.createMediaStreamSource(media);
  const node = new AudioWorkletNode(context, "capture-processor", { numberOfInputs: 1, numberOfOutputs: 1 });
  const mute = context.createGain();
  mute.gain.value = 0; // keeps the node pulled by the graph without playing the microphone back
  source.connect(node).connect(mute).connect(context.destination);
  await Promise.race([context.resume(), new Promise((resolve) => { setTimeout(resolve, 1000); })]);
  if (context.state !== "running") {
    // Autoplay policy (e.g. the overlay opened without a click): audio starts on the first click.
    setStatus("connecting", "click the page to start the microphone");
    document.addEventListener("click", () => context.resume(), { once: true });
  }
  return { context, media, node, source };
}

function closeCapture() {
  if (!capture) return;
  capture.node.port.onmessage = null;
  capture.source.disconnect();
  capture.node.disconnect();
  for (const track of capture.media.getTracks()) track.stop();
  capture.context.close();
  capture = null;
}

async function start() {
  $("start").disabled = true;
  await infoLoaded; // the wire facts decide the capture rate and which errors are retried
  setStatus("connecting", "opening the microphone");
  try {
    capture = await openCapture($("device").value);
  } catch (err) {
    setStatus("error", `microphone: ${err.message || err.name}`);
    return;
  }
  listDevices().catch((err) => console.warn("enumerateDevices failed", err)); // labels need permission
  const sampleRate = capture.context.sampleRate;
  stats.sampleRate = sampleRate;
  captions.clearPartial();
  const current = new CaptionStream({
    url: params.get("url") || streamUrl(location),
    sampleRate,
    startOptions: startOptions(),
    onEvent,
    facts,
    onStatus: (state, detail) => {
      if (stream !== current) return;
      if (state !== "live") {
        captions.clearPartial();
        applyTurn(IDLE); // the next connection's ready starts from idle too
        renderCaptions();
      }
      setStatus(state, detail);
    },
    stats,
  });
  stream = current;
  capture.node.port.onmessage = (msg) => current.pushAudio(msg.data, performance.now());
  current.start();
  current.finished.then(() => {
    if (stream === current) {
      closeCapture();
      stream = null;
    }
  });
}

async function stop() {
  if (!stream) return;
  setStatus("stopping", "waiting for the last final");
  closeCapture();
  await stream.finish();
}

// --- transcript actions -----------------------------------------------------------------------

function download(text, name, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function copyTranscript() {
  const text = formatTranscript(captions.finals);
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (plain http on another host): fall back to a selection copy.
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const button = $("copy");
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function stamp() {
  return new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
}

// --- wiring -----------------------------------------------------------------------------------

function init() {
  if (overlay) document.body.classList.add("overlay");
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  $("turn-detection").addEventListener("change", syncTurnControls);
  $("copy").addEventListener("click", copyTranscript);
  $("download-txt").addEventListener("click",
    () => download(formatTranscript(captions.finals), `transcript-${stamp()}.txt`, "text/plain"));
  $("download-srt").addEventListener("click",
    () => download(formatSubtitles(captions.finals, "srt"), `captions-${stamp()}.srt`, "application/x-subrip"));
  $("download-vtt").addEventListener("click",
    () => download(formatSubtitles(captions.finals, "vtt"), `captions-${stamp()}.vtt`, "text/vtt"));
  $("clear").addEventListener("click", () => {
    captions.finals = [];
    $("transcript").replaceChildren();
    renderCaptions();
  });
  if (navigator.mediaDevices) {
    navigator.mediaDevices.addEventListener("devicechange", () => listDevices().catch(console.warn));
  }
  listDevices().catch(console.warn);
  infoLoaded = loadInfo();
  infoLoaded.then(() => {
    // An OBS browser source cannot click Start: the overlay starts by itself.
    if (overlay && stats.state !== "error") start();
  });
  window.addEventListener("pagehide", () => { if (stream) stream.abort(); });
}

init();
