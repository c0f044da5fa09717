// AudioWorklet processor: collects the microphone's first channel and posts
// Float32 blocks of about 50 ms to the page, at the AudioContext's own rate
// (the page declares that rate in `start`; the server resamples).

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.blockFrames = Math.max(128, Math.round(sampleRate * 0.05));
    this.buffer = new Float32Array(this.blockFrames);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      let offset = 0;
      while (offset < channel.length) {
        const n = Math.min(channel.length - offset, this.blockFrames - this.filled);
        this.buffer.set(channel.subarray(offset, offset + n), this.filled);
        this.filled += n;
        offset += n;
        if (this.filled === this.blockFrames) {
          this.port.postMessage(this.buffer, [this.buffer.buffer]);
          this.buffer = new Float32Array(this.blockFrames);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
