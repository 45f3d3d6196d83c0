// The demo page: microphone -> AudioWorklet (resampled to the session's 16 kHz) -> Realtime
// websocket; answer audio (24 kHz PCM16) -> a playback worklet without gaps; barge-in (the
// server's decision) clears playback at once. window.demo exposes counters for tests.
"use strict";

const SESSION_RATE = 16000;
const OUTPUT_RATE = 24000;
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const demo = {
  ws: null, captureCtx: null, playCtx: null, playNode: null, stream: null,
  sentSamples: 0, sendLog: [], // [samples sent so far, performance.now()] per frame
  response: null, // the answer being received
  stats: { audioDeltas: 0, audioSamples: 0, responsesDone: 0, responsesCancelled: 0,
           played: 0, states: 0, errors: [], transcripts: [], latencies: [],
           serverLatencies: [], sessionUpdated: false, interrupted: 0,
           cuts: [] }, // per playback clear: samples dropped, ms after the interruption event
};
window.demo = demo;

function log(text) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
  $("log").prepend(line);
}

function setStatus(text) { $("status").textContent = text; }

function send(event) {
  if (demo.ws && demo.ws.readyState === WebSocket.OPEN) demo.ws.send(JSON.stringify(event));
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function fromBase64Pcm16(b64) {
  const binary = atob(b64);
  const ints = new Int16Array(binary.length / 2);
  for (let i = 0; i < ints.length; i++) {
    const lo = binary.charCodeAt(2 * i), hi = binary.charCodeAt(2 * i + 1);
    ints[i] = (hi << 8) | lo;
  }
  const out = new Float32Array(ints.length);
  for (let i = 0; i < ints.length; i++) out[i] = ints[i] / 32768;
  return out;
}

// when the frame holding input sample `sample` was sent (performance.now())
function sentAt(sample) {
  for (const [end, t] of demo.sendLog) if (end >= sample) return t;
  return demo.sendLog.length ? demo.sendLog[demo.sendLog.length - 1][1] : performance.now();
}

function turnDetection() {
  const mode = $("turn_detection").value;
  if (mode === "manual") return null;
  if (mode === "server_vad") return { type: "server_vad", silence_duration_ms: 500 };
  return { type: "semantic_vad", eagerness: "auto" };
}

// ------------------------------------------------------------------ audio
async function startAudio() {
  demo.playCtx = new AudioContext({ sampleRate: OUTPUT_RATE });
  await demo.playCtx.audioWorklet.addModule("/static/playback-worklet.js");
  demo.playNode = new AudioWorkletNode(demo.playCtx, "playback-processor");
  demo.playNode.connect(demo.playCtx.destination);
  demo.playNode.port.onmessage = (e) => {
    demo.stats.played = e.data.played;
    if (e.data.dropped !== undefined) {
      demo.stats.cuts.push({ dropped: e.data.dropped, queued: e.data.queued,
                             afterMs: performance.now() - (demo.interruptedAt || 0) });
    }
    $("played").textContent =
      `${demo.stats.responsesDone} / ${(e.data.played / OUTPUT_RATE).toFixed(1)} s`;
  };

  demo.stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true,
             autoGainControl: true } });
  demo.captureCtx = new AudioContext();
  await demo.captureCtx.audioWorklet.addModule("/static/capture-worklet.js");
  const source = demo.captureCtx.createMediaStreamSource(demo.stream);
  const capture = new AudioWorkletNode(demo.captureCtx, "capture-processor",
    { processorOptions: { targetRate: SESSION_RATE, frameMs: 40 } });
  capture.port.onmessage = (e) => {
    demo.sentSamples += e.data.byteLength / 2;
    demo.sendLog.push([demo.sentSamples, performance.now()]);
    if (demo.sendLog.length > 3000) demo.sendLog.splice(0, 1000);
    send({ type: "input_audio_buffer.append", audio: toBase64(e.data) });
  };
  const mute = demo.captureCtx.createGain(); // keeps the graph pulling, plays nothing
  mute.gain.value = 0;
  source.connect(capture).connect(mute).connect(demo.captureCtx.destination);
  await demo.playCtx.resume();
  await demo.captureCtx.resume();
}

function stopPlayback() {
  if (demo.playNode) demo.playNode.port.postMessage({ type: "clear" });
}

// ------------------------------------------------------------------ events
function onEvent(event) {
  switch (event.type) {
    case "session.created":
      setStatus("connected");
      break;
    case "session.updated":
      demo.stats.sessionUpdated = true;
      setStatus("listening");
      break;
    case "input_audio_buffer.speech_started":
      setStatus("hearing speech");
      demo.speechEndSentAt = null;
      break;
    case "input_audio_buffer.speech_stopped":
      demo.speechEndSentAt = sentAt(event.audio_end_ms * SESSION_RATE / 1000);
      setStatus("listening");
      measureLatency();
      break;
    case "input_audio_buffer.committed":
      addTurn("user", "(spoken turn)");
      break;
    case "response.created":
      demo.response = { id: event.response.id, line: addTurn("assistant", ""),
                        firstAudioAt: null, measured: false,
                        speechEndSentAt: demo.speechEndSentAt };
      setStatus("answering");
      break;
    case "response.output_audio_transcript.delta":
      if (demo.response && demo.response.id === event.response_id) {
        demo.response.line.textContent += event.delta;
      }
      break;
    case "response.output_audio.delta": {
      const samples = fromBase64Pcm16(event.delta);
      demo.stats.audioDeltas += 1;
      demo.stats.audioSamples += samples.length;
      demo.playNode.port.postMessage({ type: "push", samples }, [samples.buffer]);
      if (demo.response && demo.response.firstAudioAt === null) {
        demo.response.firstAudioAt = performance.now();
        measureLatency();
      }
      break;
    }
    case "response.done": {
      const status = event.response.status;
      demo.stats.responsesDone += 1;
      const transcript = (event.response.output[0] || { content: [{}] }).content[0].transcript;
      demo.stats.transcripts.push(transcript || "");
      if (status === "cancelled") {
        demo.stats.responsesCancelled += 1;
        stopPlayback();
        if (demo.response) demo.response.line.classList.add("cancelled");
      }
      setStatus(status === "cancelled" ? "interrupted" : "listening");
      break;
    }
    case "freeze_omni.paused":
      demo.stats.paused = (demo.stats.paused || 0) + 1;
      stopPlayback(); // the user speaks over the answer: silent now, resent if it resumes
      setStatus("paused");
      break;
    case "freeze_omni.resumed":
      log(`side talk: the answer goes on after ${event.paused_ms} ms`);
      setStatus("answering");
      break;
    case "freeze_omni.interrupted":
      demo.stats.interrupted += 1;
      demo.interruptedAt = performance.now();
      stopPlayback(); // barge-in: the answer stops now, whatever is still queued
      log(`barge-in: kept "${event.voiced_text}"`);
      break;
    case "freeze_omni.state":
      addState(event.state, event.probs);
      break;
    case "freeze_omni.latency":
      if (event.speech_end_to_first_audio_s !== null) {
        demo.stats.serverLatencies.push(event.speech_end_to_first_audio_s);
        $("latency_server").textContent =
          `${(event.speech_end_to_first_audio_s * 1000).toFixed(0)} ms`;
      }
      break;
    case "error":
      demo.stats.errors.push(event.error);
      log(`error ${event.error.code}: ${event.error.message}`);
      break;
    default:
      break;
  }
}

// speech end -> first audio, as this page saw it: the speech end is when the frame holding
// the VAD's end of speech was sent (or the Answer click); the state head may have answered
// before the VAD's silence was long enough, so whichever comes last completes the figure
function measureLatency() {
  const r = demo.response;
  if (!r || r.measured || r.firstAudioAt === null) return;
  const end = r.speechEndSentAt || demo.speechEndSentAt;
  if (!end) return;
  r.measured = true;
  const ms = r.firstAudioAt - end;
  demo.stats.latencies.push(ms / 1000);
  $("latency_client").textContent = `${ms.toFixed(0)} ms`;
}

function addTurn(role, text) {
  const line = document.createElement("div");
  line.className = `turn ${role}`;
  line.textContent = text;
  const label = document.createElement("b");
  label.textContent = role === "user" ? "you: " : "model: ";
  const wrap = document.createElement("div");
  wrap.append(label, line);
  $("conversation").append(wrap);
  $("conversation").scrollTop = $("conversation").scrollHeight;
  return line;
}

function addState(state, probs) {
  demo.stats.states += 1;
  const box = document.createElement("div");
  box.className = `chunk ${state}`;
  box.title = `${state} ${probs.map((p) => p.toFixed(2)).join(" / ")}`;
  const strip = $("states");
  strip.append(box);
  while (strip.children.length > 160) strip.firstChild.remove();
  $("last_state").textContent = `${state} (p = ${probs.map((p) => p.toFixed(2)).join(", ")})`;
}

// ------------------------------------------------------------------ start / stop
async function start() {
  $("start").disabled = true;
  setStatus("connecting");
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/realtime?model=freeze-omni`);
  demo.ws = ws;
  ws.onmessage = (e) => onEvent(JSON.parse(e.data));
  ws.onclose = (e) => { setStatus(`closed (${e.code}${e.reason ? ": " + e.reason : ""})`);
                        stop(); };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  send({ type: "session.update", session: {
    type: "realtime", instructions: $("instructions").value,
    audio: { input: { format: { type: "audio/pcm", rate: SESSION_RATE },
                      turn_detection: turnDetection() },
             output: { format: { type: "audio/pcm", rate: OUTPUT_RATE } } } } });
  try {
    await startAudio();
  } catch (err) {
    log(`audio: ${err}`);
    setStatus(`no microphone: ${err.message || err}`);
    return;
  }
  $("stop").disabled = false;
  $("commit").disabled = $("turn_detection").value !== "manual";
}

function stop() {
  stopPlayback();
  if (demo.stream) demo.stream.getTracks().forEach((t) => t.stop());
  if (demo.captureCtx) demo.captureCtx.close();
  demo.stream = demo.captureCtx = null;
  if (demo.ws && demo.ws.readyState === WebSocket.OPEN) demo.ws.close();
  $("start").disabled = false;
  $("stop").disabled = true;
  $("commit").disabled = true;
}

$("start").onclick = start;
$("stop").onclick = stop;
$("commit").onclick = () => {
  demo.speechEndSentAt = performance.now();
  send({ type: "input_audio_buffer.commit" });
};
if (params.get("turn_detection")) $("turn_detection").value = params.get("turn_detection");
if (params.get("instructions")) $("instructions").value = params.get("instructions");
if (params.get("autostart")) start();
