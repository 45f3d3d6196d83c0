// Microphone capture: the context's rate (often 48 kHz) -> the session's rate (16 or 24 kHz),
// PCM16 frames of `frameMs` posted to the page. Resampling keeps its position and last sample
// across the 128-sample render blocks, so the stream has no seams; a short moving average
// before the linear interpolation keeps the worst aliasing out when the rate drops by 2x-3x.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.targetRate = opts.targetRate || 16000;
    this.step = sampleRate / this.targetRate; // input samples per output sample
    this.taps = Math.max(1, Math.floor(this.step)); // moving-average length
    this.history = new Float32Array(this.taps); // last inputs, for the average
    this.historyPos = 0;
    this.prev = 0; // the previous (smoothed) input sample
    this.pos = 0; // position of the next output, in input samples after `prev`
    this.frame = new Int16Array(Math.round(this.targetRate * (opts.frameMs || 20) / 1000));
    this.fill = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      this.history[this.historyPos] = channel[i];
      this.historyPos = (this.historyPos + 1) % this.taps;
      let sum = 0;
      for (let k = 0; k < this.taps; k++) sum += this.history[k];
      const cur = sum / this.taps;
      // outputs that fall between prev (t = 0) and cur (t = 1)
      while (this.pos <= 1) {
        const value = this.prev + (cur - this.prev) * this.pos;
        this.frame[this.fill++] = Math.max(-32768, Math.min(32767, Math.round(value * 32768)));
        if (this.fill === this.frame.length) {
          this.port.postMessage(this.frame.buffer.slice(0));
          this.fill = 0;
        }
        this.pos += this.step;
      }
      this.pos -= 1;
      this.prev = cur;
    }
    return true;
  }
}
registerProcessor("capture-processor", CaptureProcessor);
