// Pure helpers of the browser demo: caption state, subtitle formatting, the
// reconnect schedule, the replay buffer and URLs. No DOM, no sockets, so the
// same logic as the Python clients (client/common.py, client/subtitles.py).

/** `?token=KEY` of the page's own URL, passed on to the server (servers started with API keys). */
function tokenQuery(loc) {
  const token = new URLSearchParams(loc.search || "").get("token");
  return token ? `?token=${encodeURIComponent(token)}` : "";
}

/** Where the WebSocket and /v1/info live, relative to the page (wss:// on https pages). */
export function streamUrl(loc) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/v1/stream${tokenQuery(loc)}`;
}

export function infoUrl(loc) {
  return `${loc.protocol}//${loc.host}/v1/info${tokenQuery(loc)}`;
}

/** Exponential reconnect delay in seconds for the n-th failed attempt (0-based), ±10 % jitter. */
export function backoffDelayS(attempt, { initialS = 0.5, factor = 2, maxS = 5, jitter = 0.1 } = {},
  rand = Math.random) {
  const base = Math.min(maxS, initialS * factor ** Math.max(0, attempt));
  return Math.max(0, base * (1 + jitter * (2 * rand() - 1)));
}

/** Finals (each with absolute start/end seconds, never changed) and the open partial. */
export class CaptionState {
  constructor() {
    this.finals = [];
    this.partial = "";
    this.lastEndS = 0;
  }

  /** Apply one server event; `offsetS` is where this connection's time 0 lies in the whole capture. */
  apply(event, offsetS = 0) {
    if (event.type === "partial") {
      this.partial = (event.text || "").trim();
      return true;
    }
    if (event.type === "final") {
      this.partial = "";
      const text = (event.text || "").trim().replace(/\s+/g, " ");
      if (text) {
        // Monotonic, non-overlapping cue times even across reconnects.
        const startS = Math.max(offsetS + event.start_s, this.lastEndS);
        const endS = Math.max(offsetS + event.end_s, startS + 0.5);
        this.lastEndS = endS;
        this.finals.push({ text, startS, endS });
      }
      return true;
    }
    return false;
  }

  clearPartial() {
    this.partial = "";
  }
}

function pad(n, width) {
  return String(n).padStart(width, "0");
}

/** HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (VTT). */
export function formatTimestamp(seconds, format) {
  const totalMs = Math.max(0, Math.round(seconds * 1000));
  const h = Math.floor(totalMs / 3600000);
  const m = Math.floor((totalMs % 3600000) / 60000);
  const s = Math.floor((totalMs % 60000) / 1000);
  const ms = totalMs % 1000;
  return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}${format === "srt" ? "," : "."}${pad(ms, 3)}`;
}

/** Wrap cue text at `width` characters, never producing an empty line (which would end the cue). */
export function wrapText(text, width = 42) {
  const lines = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  return lines.join("\n");
}

/** A whole subtitle document ("srt" or "vtt") from finals `{text, startS, endS}`. */
export function formatSubtitles(finals, format) {
  const blocks = finals.map((cue, i) => {
    let text = wrapText(cue.text);
    if (format === "vtt") {
      text = text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/-->/g, "--&gt;");
    }
    const times = `${formatTimestamp(cue.startS, format)} --> ${formatTimestamp(cue.endS, format)}`;
    return `${i + 1}\n${times}\n${text}\n\n`;
  });
  return (format === "vtt" ? "WEBVTT\n\n" : "") + blocks.join("");
}

export function formatTranscript(finals) {
  return finals.map((cue) => cue.text).join("\n") + (finals.length ? "\n" : "");
}

/**
 * Captured audio (Int16Array blocks) not yet known to be transcribed, by
 * absolute sample position: [ackedPos, capturedPos), split at sentPos into
 * sent and unsent. See client/common.py ReplayBuffer: a final acknowledges
 * audio up to its end; after a reconnect the unacknowledged audio is sent
 * again. Unsent audio past `maxUnsent` samples is dropped oldest first.
 */
export class ReplayBuffer {
  constructor(maxUnsent, maxReplay) {
    this.maxUnsent = maxUnsent;
    this.maxReplay = maxReplay;
    this.blocks = [];
    this.ackedPos = 0;
    this.sentPos = 0;
    this.capturedPos = 0;
    this.droppedUnsent = 0;
  }

  get unsent() {
    return this.capturedPos - this.sentPos;
  }

  append(block) {
    this.blocks.push(block);
    this.capturedPos += block.length;
    if (this.unsent > this.maxUnsent) {
      const lost = this.unsent - this.maxUnsent;
      this.droppedUnsent += lost;
      this.sentPos += lost;
      this.trimTo(this.sentPos);
    }
  }

  /** The next audio to send (at most maxSamples) as one Int16Array; marks it sent. */
  takeUnsent(maxSamples) {
    const n = Math.min(this.unsent, maxSamples);
    const out = new Int16Array(n);
    let pos = this.ackedPos;
    let filled = 0;
    for (const block of this.blocks) {
      const lo = Math.max(this.sentPos, pos);
      const hi = Math.min(this.sentPos + n, pos + block.length);
      if (lo < hi) {
        out.set(block.subarray(lo - pos, hi - pos), filled);
        filled += hi - lo;
      }
      pos += block.length;
      if (pos >= this.sentPos + n) break;
    }
    this.sentPos += n;
    this.trimTo(Math.max(this.ackedPos, this.sentPos - this.maxReplay));
    return out;
  }

  ack(position) {
    this.trimTo(Math.min(Math.max(position, this.ackedPos), this.sentPos));
  }

  rewind() {
    this.sentPos = this.ackedPos;
    return this.ackedPos;
  }

  trimTo(position) {
    while (this.blocks.length && position > this.ackedPos) {
      const first = this.blocks[0];
      const cut = position - this.ackedPos;
      if (cut >= first.length) {
        this.blocks.shift();
        this.ackedPos += first.length;
      } else {
        this.blocks[0] = first.subarray(cut);
        this.ackedPos += cut;
      }
    }
  }
}

/**
 * Float32 samples in [-1, 1] → Int16Array (little-endian on every browser platform), bit for bit
 * as streaming/audio.py float_to_pcm16: clamp, scale by 32767 in float32, round half to even.
 */
export function floatToInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const y = Math.fround(Math.max(-1, Math.min(1, samples[i])) * 32767);
    let r = Math.round(y); // half up; numpy's rint takes the even neighbour of a tie
    if (r - y === 0.5 && r % 2 !== 0) r -= 1;
    out[i] = r;
  }
  return out;
}

/**
 * The wire facts of /v1/info (`protocol`: retryable codes, sample-rate bounds), or the safe
 * fallback when the server did not say: no error is retried, and audio goes out at 16 kHz.
 */
export function protocolFacts(info) {
  const p = info && info.protocol;
  if (p && typeof p === "object" && Array.isArray(p.retryable_codes)
      && Number.isInteger(p.min_sample_rate_hz) && Number.isInteger(p.max_sample_rate_hz)) {
    return {
      known: true,
      retryableCodes: new Set(p.retryable_codes),
      minSampleRateHz: p.min_sample_rate_hz,
      maxSampleRateHz: p.max_sample_rate_hz,
    };
  }
  return { known: false, retryableCodes: new Set(), minSampleRateHz: 16000, maxSampleRateHz: 16000 };
}

/** The capture rate to ask for: the device's own rate when the protocol takes it, else the nearest bound. */
export function captureRateHz(deviceRateHz, facts) {
  return Math.min(facts.maxSampleRateHz, Math.max(facts.minSampleRateHz, deviceRateHz));
}
