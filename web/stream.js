// One caption stream across reconnects: sends PCM s16le to /v1/stream (protocol v1,
// JSON mode), hands events to the page, measures client-side latency.
//
// Like client/streaming_client.py: audio captured while the server is away is
// kept in a bounded buffer and sent when it is back, and audio not yet covered
// by a final is sent again after a reconnect, so a server restart loses no
// utterance. Which server errors are worth a reconnect is the server's fact
// (/v1/info `protocol.retryable_codes`, see protocolFacts), never a copy here.

import { ReplayBuffer, backoffDelayS, floatToInt16, protocolFacts } from "./captions.js";

const MAX_FRAME_S = 0.5;

/** Capture time of absolute sample positions, for latency (ms on the performance.now() clock). */
class CaptureClock {
  constructor(sampleRate) {
    this.sampleRate = sampleRate;
    this.ends = [];
    this.times = [];
  }

  captured(endPos, atMs) {
    this.ends.push(endPos);
    this.times.push(atMs);
    if (this.ends.length > 40000) {
      this.ends.splice(0, 10000);
      this.times.splice(0, 10000);
    }
  }

  timeOf(pos) {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ends[mid] <= pos) lo = mid + 1;
      else hi = mid;
    }
    if (lo >= this.ends.length) return null;
    return this.times[lo] - ((this.ends[lo] - pos) / this.sampleRate) * 1000;
  }
}

export class CaptionStream {
  /**
   * @param {object} opts
   * @param {string} opts.url            ws:// or wss:// URL of /v1/stream
   * @param {number} opts.sampleRate     rate of the audio passed to pushAudio (declared in start)
   * @param {object} opts.startOptions   extra start fields (language, window_s, …)
   * @param {(event: object, offsetS: number) => void} opts.onEvent
   * @param {(state: string, detail?: string) => void} opts.onStatus
   * @param {object} opts.stats          receives the latency measurements (window.captionStats)
   * @param {object} opts.facts          protocolFacts(/v1/info): the retryable error codes
   */
  constructor({ url, sampleRate, startOptions = {}, onEvent, onStatus, stats, facts = protocolFacts(null),
    maxBufferS = 120, replayS = 30, stopTimeoutS = 15 }) {
    this.url = url;
    this.sampleRate = sampleRate;
    this.startOptions = startOptions;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.stats = stats;
    this.retryableCodes = facts.retryableCodes;
    this.stopTimeoutS = stopTimeoutS;
    this.buffer = new ReplayBuffer(Math.round(maxBufferS * sampleRate), Math.round(replayS * sampleRate));
    this.clock = new CaptureClock(sampleRate);
    this.ws = null;
    this.ready = false;
    this.basePos = 0;
    this.connections = 0;
    this.attempt = 0;
    this.finishing = false;
    this.stopSent = false;
    this.closed = false;
    this.seenPartial = new Set();
    this.reconnectTimer = null;
    this.giveUpTimer = null;
    this.warnedDrop = false;
    this.finished = new Promise((resolve) => { this.resolveFinished = resolve; });
  }

  start() {
    this.connect();
  }

  /** Float32 samples captured at `capturedAtMs` (performance.now()). */
  pushAudio(samples, capturedAtMs) {
    if (this.finishing || this.closed) return;
    this.buffer.append(floatToInt16(samples));
    this.clock.captured(this.buffer.capturedPos, capturedAtMs);
    if (this.buffer.droppedUnsent && !this.warnedDrop) {
      this.warnedDrop = true;
      this.onStatus("reconnecting", "buffer full: dropping the oldest audio until the server is back");
    }
    this.flush();
  }

  /** No more audio: send what is left and `stop`, wait (bounded) for the last final. Resolves when done. */
  finish() {
    if (!this.finishing) {
      this.finishing = true;
      this.armGiveUp();
      this.flush();
    }
    return this.finished;
  }

  /** Close now, without waiting. */
  abort(reason = "stopped") {
    this.done("idle", reason);
  }

  armGiveUp() {
    clearTimeout(this.giveUpTimer);
    this.giveUpTimer = setTimeout(() => this.done("error", "gave up waiting for the last final"),
      this.stopTimeoutS * 1000);
  }

  done(state, detail) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.giveUpTimer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.onmessage = null;
      this.ws.onerror = null;
      try { this.ws.close(1000); } catch (err) { console.warn("close failed", err); }
    }
    this.onStatus(state, detail);
    this.resolveFinished();
  }

  connect() {
    if (this.closed) return;
    this.ready = false;
    this.stopSent = false;
    this.onStatus(this.connections ? "reconnecting" : "connecting", this.connections ? "connecting…" : undefined);
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({
        type: "start", sample_rate: this.sampleRate, encoding: "pcm_s16le", partials: true, ...this.startOptions,
      }));
    };
    ws.onmessage = (msg) => {
      if (typeof msg.data !== "string") return; // JSON mode: events are text frames
      this.handle(JSON.parse(msg.data));
    };
    ws.onerror = () => { /* onclose follows and says what happened */ };
    ws.onclose = (ev) => this.lost(ev);
  }

  handle(event) {
    const now = performance.now();
    if (!this.ready) {
      if (event.type === "error") {
        this.onError(event);
        return;
      }
      this.ready = true;
      this.attempt = 0;
      this.connection = this.connections++;
      this.basePos = this.buffer.rewind();
      this.warnedDrop = false;
      this.buffer.droppedUnsent = 0;
      this.onStatus("live", this.connection ? "reconnected" : undefined);
      this.onEvent(event, this.basePos / this.sampleRate);
      this.flush();
      return;
    }
    this.measure(event, now);
    this.onEvent(event, this.basePos / this.sampleRate);
    if (event.type === "final") {
      this.buffer.ack(this.basePos + Math.round(event.end_s * this.sampleRate));
    } else if (event.type === "end") {
      this.done("idle", "finished");
    } else if (event.type === "error") {
      this.onError(event);
    }
  }

  onError(event) {
    if (!event.fatal) {
      console.warn(`server warning ${event.code}: ${event.message}`);
      return;
    }
    if (this.retryableCodes.has(event.code)) {
      this.onStatus("reconnecting", `server error ${event.code}`);
      return; // the server closes; onclose reconnects
    }
    this.done("error", `server error ${event.code}: ${event.message}`);
  }

  measure(event, now) {
    const s = this.stats;
    s.log.push({ type: event.type, utteranceId: event.utterance_id, atMs: now });
    if (s.log.length > 2000) s.log.splice(0, 500);
    if (event.type === "partial") {
      s.partials++;
      const key = `${this.connection}:${event.utterance_id}`;
      if (!this.seenPartial.has(key)) {
        this.seenPartial.add(key);
        const t = this.clock.timeOf(this.basePos + Math.round(event.start_s * this.sampleRate));
        if (t !== null) {
          s.firstPartialLatencyS = (now - t) / 1000;
          s.firstPartialLatenciesS.push(s.firstPartialLatencyS);
        }
      }
    } else if (event.type === "final") {
      s.finals++;
      const t = this.clock.timeOf(this.basePos + Math.round(event.end_s * this.sampleRate) - 1);
      if (t !== null) {
        s.finalLatencyS = (now - t) / 1000;
        s.finalLatenciesS.push(s.finalLatencyS);
      }
    }
  }

  flush() {
    const ws = this.ws;
    if (!ws || !this.ready || ws.readyState !== WebSocket.OPEN || this.stopSent) return;
    const maxFrame = Math.round(MAX_FRAME_S * this.sampleRate);
    while (this.buffer.unsent > 0) {
      ws.send(this.buffer.takeUnsent(maxFrame).buffer);
    }
    if (this.finishing) {
      ws.send(JSON.stringify({ type: "stop" }));
      this.stopSent = true;
      this.armGiveUp(); // the server now has stopTimeoutS to send the last final and end
    }
  }

  lost(ev) {
    if (this.closed) return;
    this.ready = false;
    this.ws = null;
    const delayS = backoffDelayS(this.attempt++);
    this.stats.reconnects = (this.stats.reconnects || 0) + 1;
    const why = ev.code === 1006 ? "connection lost" : `closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`;
    this.onStatus("reconnecting", `${why}; retrying in ${delayS.toFixed(1)} s`);
    this.reconnectTimer = setTimeout(() => this.connect(), delayS * 1000);
  }
}
