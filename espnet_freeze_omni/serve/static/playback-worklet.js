// Streamed playback: PCM chunks are queued back to back and played without gaps; "clear"
// drops everything queued at once (barge-in). Runs in a 24 kHz AudioContext, so the answer's
// samples are played as they are. Reports how much it has played, for the page and its tests.
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; // Float32Array chunks
    this.offset = 0; // read position in queue[0]
    this.played = 0; // samples of answer audio played so far
    this.sinceReport = 0;
    this.port.onmessage = (e) => {
      if (e.data.type === "push") this.queue.push(e.data.samples);
      else if (e.data.type === "clear") {
        const dropped = this.queued(); // what the barge-in kept from being played
        this.queue = [];
        this.offset = 0;
        this.report(dropped);
      }
    };
  }

  queued() { return this.queue.reduce((n, c) => n + c.length, 0) - this.offset; }

  report(dropped) {
    this.port.postMessage({ played: this.played, queued: this.queued(), dropped });
    this.sinceReport = 0;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const n = Math.min(out.length - i, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      this.played += n;
      if (this.offset === chunk.length) { this.queue.shift(); this.offset = 0; }
    }
    out.fill(0, i);
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate / 10) this.report();
    return true;
  }
}
registerProcessor("playback-processor", PlaybackProcessor);
