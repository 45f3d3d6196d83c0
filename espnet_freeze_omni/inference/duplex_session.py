"""The live dialogue loop: audio in as it arrives, the state head takes turns, speech out.

    session = s2s.session(system_role="You are a helpful voice assistant.")
    for pcm in microphone():              # 16 kHz mono, float32 or int16, any length
        for event in session.feed(pcm):
            handle(event)                 # speech_started, state, turn_ended, text, audio, ...
    events = session.flush()              # end of input: the answer in progress is finished

One session is one conversation (SPEC §3). Input audio is cut into ticks of one encoder chunk
(160 ms) on the stream's own clock, so what comes out never depends on how the caller sliced
the audio. Ticks end where a chunk becomes complete, the frontend's and encoder's look-ahead
(36 ms in the embedded recipe) past its end, so that the state head judges each chunk as
soon as its audio is in, not a tick later. Each tick goes once through the streaming
frontend, the encoder's K/V cache, the adapter's conv cache and the frozen LLM's K/V cache;
the state head reads the LLM's last position after every chunk:

    listen   keep listening
    respond  the user finished: the answer is generated from the very K/V that heard the
             turn (the chat suffix and then the answer tokens are appended to it); while the
             assistant speaks, a "respond" on the user's new audio interrupts it (barge-in)
    ignore   not addressed to the assistant: the turn is dropped, an answer in progress goes on

History is the LLM's K/V of the earlier audio turns and the assistant's own answers, as in
the paper: nothing is re-fed as text. (A typed turn, `text_turn(text)`, enters the same
cache as the text-in model reads a question, and is answered at once.) A turn is listened to on a fork of the history (the
turn may be side talk, and the answer in progress must stay usable); the fork becomes the
history when the turn is answered. The answer's text is generated ahead of its voice: at a
barge-in the history keeps the answer as far as it had been voiced when the user started
speaking (segment by segment), and `interrupted` says how much was voiced when it stopped.

Voice activity detection (`vad=True`, Silero) gates what the LLM hears: a turn opens at
speech start with the last `vad_replay_s` of audio replayed (the VAD needs that long to
fire), is fed while the VAD hears speech (its minimum silence included, so the state head
sees the pause it learned to judge), and stays open across a pause: when speech resumes, the
audio since the pause (at most `vad_replay_s`) is fed and the same turn goes on. A "respond"
while the VAD still hears the user (`StreamingVAD.hearing_speech`) is held: the turn cannot
have ended while they are audibly speaking, and the head is asked again at the next chunk.
Without VAD every tick is fed and the state head alone takes the turns; a barge-in is then
listened to from the start of the answer segment being played (see `_refork_without_vad`).

`turn_detection`: "state_head" (the paper), "vad" (a turn ends when the VAD says the speech
stopped; a baseline) or "manual" (only `commit()` ends a turn, like a push-to-talk button).
When the VAD hears the user start while an answer is out, the answer PAUSES at once
(`pause_on_speech`, the default: a `paused` event; what was sent to play after it is taken
back), and the state head decides on the new speech: "respond" cuts the answer where it
paused (`interrupted`; the barge-in turn is answered), "ignore" (side talk), or the speech
stopping with no decision, RESUMES it (`resumed`; the held audio is sent again, in new
`audio` events from that time; `answer_done` waits for it). So a barge-in stops the sound
within the VAD's onset delay and side talk costs a pause, not the answer. Without the
pause, the answer plays on until the state head says "respond" (the paper's design: the stop
comes at the end of the user's interruption), or with `interrupt_on_speech` it is cut as
soon as the VAD hears the user start (as OpenAI's server VAD does: side talk cuts it too).

Clock: events carry `time`, seconds on the session clock. With `clock="audio"` computing
takes no time (deterministic: the figures of tests and recipes); with `clock="measured"`
the session's own compute time is added as a single worker would spend it (a tick cannot be
processed before it has arrived; the answer is generated in the time between ticks), so
`time` is when the event would happen in real time on this machine. Output audio is played
back to back: an audio packet starts at max(its production time, the end of the previous
packet) (`play_at`).

Context limit: `max_context_tokens` bounds the LLM cache. When a new turn would not fit, the
oldest turns are dropped and the rest of the history is prefilled again from the stored LLM
input vectors of each turn (the audio is never encoded again). A turn longer than
`max_turn_seconds` keeps its last half: the LLM re-reads those audio vectors behind the
prompt.
"""
from __future__ import annotations

import collections
import dataclasses
import time
import zlib
from typing import Any, Deque, Dict, List, Optional

import numpy as np
import torch

from espnet_freeze_omni.models.speech_input import (
    STATE_IGNORE,
    STATE_LISTEN,
    STATE_RESPOND,
    SpokenDialogModel,
)

STATE_NAMES = {STATE_LISTEN: "listen", STATE_RESPOND: "respond", STATE_IGNORE: "ignore"}
EVENT_TYPES = ("speech_started", "speech_stopped", "state", "turn_ended", "ignored", "text",
               "audio", "paused", "resumed", "answer_done", "interrupted")
TURN_DETECTION = ("state_head", "vad", "manual")
CLOCKS = ("audio", "measured")
STATE_RULES = ("argmax", "release")
LLM_SAMPLINGS = ("greedy", "release")


def decide_state(probs: torch.Tensor, rule: str = "argmax") -> int:
    """The state a chunk's probabilities (listen, respond, ignore) say. "argmax": the
    likeliest. "release": the authors' order: ignore if p(ignore) > 0.5, else respond if
    p(respond) > 0.5, else listen."""
    if rule == "release":
        if float(probs[STATE_IGNORE]) > 0.5:
            return STATE_IGNORE
        return STATE_RESPOND if float(probs[STATE_RESPOND]) > 0.5 else STATE_LISTEN
    return int(probs.argmax())


def pick_token(logits: torch.Tensor, sampling: str = "greedy", temperature: float = 0.8,
               top_k: int = 20, top_p: float = 0.8,
               generator: Optional[torch.Generator] = None) -> int:
    """The answer token for next-token `logits` (V,). "greedy": the likeliest. "release": the
    authors' sampling: softmax(logits / temperature); keep the `top_k` likeliest (0: all),
    renormalize; then, over the probabilities sorted in descending order, drop every token
    whose cumulative probability exceeds `top_p` (so the token crossing p is dropped too)
    but always keep the likeliest one (top_p 0: no cut), renormalize; draw one token with
    `generator`."""
    if sampling == "greedy":
        return int(logits.argmax())
    probs = torch.softmax(logits.detach().float().cpu() / temperature, dim=-1)
    if 0 < top_k < probs.numel():
        values, index = probs.topk(top_k)
        probs = torch.zeros_like(probs).scatter_(0, index, values)
        probs = probs / probs.sum()
    if top_p > 0.0:
        ordered, order = probs.sort(descending=True)
        drop = ordered.cumsum(0) > top_p
        drop[0] = False
        probs[order[drop]] = 0.0
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclasses.dataclass
class SessionEvent:
    """One thing that happened in a session.

    time: session-clock seconds at which it happens (see the module docstring);
    audio_time: seconds of input audio the session had consumed then;
    data: the event's fields (JSON-ready); pcm: the samples of an `audio` event (float32 at
    the session's `output_sample_rate`).
    """

    type: str
    time: float
    audio_time: float
    data: Dict[str, Any] = dataclasses.field(default_factory=dict)
    pcm: Optional[np.ndarray] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: the pcm is replaced by its length in samples."""
        out = {"type": self.type, "time": round(self.time, 4),
               "audio_time": round(self.audio_time, 4), **self.data}
        if self.pcm is not None:
            out["samples"] = int(len(self.pcm))
        return out


@dataclasses.dataclass
class SessionOptions:
    """What a DuplexSession can be told (all keyword arguments of `Speech2Speech.session`)."""

    system_role: Optional[str] = None  # the system prompt; None: the chat template's default
    vad: bool = True
    vad_threshold: float = 0.5
    # silence the VAD waits before it says the speech stopped; the LLM hears it all, so with
    # the state head taking turns it is how much silence the head may judge (None: 2 s as
    # the authors' server; 0.5 s with turn_detection="vad", where it is the turn end)
    vad_min_silence_s: Optional[float] = None
    vad_replay_s: float = 0.96  # 6 chunks, as the authors' server
    turn_detection: str = "state_head"
    # the first chunks of a turn cannot end it: by default the replayed ones with VAD (the
    # authors force them to "listen"), none without
    min_turn_chunks: Optional[int] = None
    barge_in: bool = True
    # with VAD: an answer being spoken stops as soon as the VAD hears the user start (as
    # OpenAI's server VAD interrupts), not when the state head later says respond: the stop
    # comes within the VAD's onset delay instead of after the user's interruption, but side
    # talk during an answer then stops it too (the paper: False, the state head decides)
    interrupt_on_speech: bool = False
    # with VAD: an answer being spoken PAUSES as soon as the VAD hears the user start; the
    # state head then decides: "respond" cuts it (a barge-in, stopped where it paused),
    # "ignore" (side talk) or the speech stopping undecided resumes it where it paused. The
    # stop is as fast as with interrupt_on_speech, and side talk does not lose the answer
    # (interrupt_on_speech, when set, cuts instead)
    pause_on_speech: bool = True
    # with VAD: a turn the state head has left undecided this long after the speech stopped
    # is answered anyway (a live demo's fallback; None: wait for the state head, the paper)
    commit_after_silence_s: Optional[float] = None
    clock: str = "audio"
    # False: feed() and commit() only listen, and the answer is generated by pump() alone (a
    # server's scheduler then decides which session's answer gets the compute next)
    answer_in_feed: bool = True
    max_context_tokens: Optional[int] = None  # default: the LLM's positions, at most 8192
    max_turn_seconds: float = 30.0
    max_new_tokens: Optional[int] = None  # default: the model's decode setting
    # how a chunk's state probabilities decide (decide_state); None: the model's own
    # `state_rule` (an imported release model says "release"), else "argmax"
    state_rule: Optional[str] = None
    # respond as soon as p(respond) of a chunk reaches this, whatever the rule says (an
    # earlier turn end at the risk of answering into a pause); None: the rule alone
    respond_threshold: Optional[float] = None
    # how answer tokens are picked (pick_token): "greedy", or "release": the authors'
    # temperature / top-k / top-p sampling with the values below, drawn from this session's
    # own seeded generator (`llm_generator`, seeded by `reseed`)
    llm_sampling: str = "greedy"
    llm_temperature: float = 0.8
    llm_top_k: int = 20
    llm_top_p: float = 0.8

    def check(self) -> "SessionOptions":
        if self.state_rule is not None and self.state_rule not in STATE_RULES:
            raise ValueError(f"state_rule must be one of {STATE_RULES}, got {self.state_rule!r}")
        if self.respond_threshold is not None and not 0.0 < self.respond_threshold <= 1.0:
            raise ValueError(f"respond_threshold must be in (0, 1], got {self.respond_threshold}")
        if self.llm_sampling not in LLM_SAMPLINGS:
            raise ValueError(f"llm_sampling must be one of {LLM_SAMPLINGS}, "
                             f"got {self.llm_sampling!r}")
        if self.llm_temperature <= 0 or self.llm_top_k < 0 or not 0 <= self.llm_top_p <= 1:
            raise ValueError("llm_temperature must be > 0, llm_top_k >= 0 and llm_top_p in "
                             f"[0, 1], got {self.llm_temperature}, {self.llm_top_k}, "
                             f"{self.llm_top_p}")
        if self.turn_detection not in TURN_DETECTION:
            raise ValueError(f"turn_detection must be one of {TURN_DETECTION}, "
                             f"got {self.turn_detection!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.turn_detection == "vad" and not self.vad:
            raise ValueError("turn_detection='vad' needs vad=True")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ValueError(f"vad_threshold must be in (0, 1), got {self.vad_threshold}")
        if self.vad_min_silence_s is None:
            self.vad_min_silence_s = 0.5 if self.turn_detection == "vad" else 2.0
        if self.vad_min_silence_s < 0 or self.vad_replay_s < 0:
            raise ValueError("vad_min_silence_s and vad_replay_s must be >= 0")
        if self.interrupt_on_speech and not (self.vad and self.barge_in):
            raise ValueError("interrupt_on_speech needs vad=True and barge_in=True")
        if self.commit_after_silence_s is not None and (
                not self.vad or self.commit_after_silence_s < 0):
            raise ValueError("commit_after_silence_s needs vad=True and a value >= 0")
        if self.max_turn_seconds <= 0:
            raise ValueError(f"max_turn_seconds must be > 0, got {self.max_turn_seconds}")
        return self


@dataclasses.dataclass
class _Turn:
    """What one turn added to the LLM cache, kept to prefill the history again."""

    user_embeds: torch.Tensor  # (n, H): prompt vectors, audio vectors, chat suffix
    assistant_ids: List[int]  # answer tokens + end of turn + opening of the next user turn

    @property
    def length(self) -> int:
        return self.user_embeds.size(0) + len(self.assistant_ids)


class _ListenBranch:
    """One user turn being listened to, on its own fork of the dialogue cache."""

    def __init__(self, session: "DuplexSession", cache, opened_at: float, replayed: int,
                 fork_voiced: Optional[int], preroll: Optional[np.ndarray] = None):
        from espnet_freeze_omni.inference.streaming_frontend import streaming_frontend_for

        model, llm = session.model, session.llm
        self.session = session
        self.cache = cache
        self.base_length = llm.cache_length(cache)
        self.opened_at = opened_at
        self.fork_voiced = fork_voiced  # answer tokens kept in the base (barge-in branch)
        self.frontend = streaming_frontend_for(model.frontend)
        self.encoder_state = model.encoder.init_streaming_state(1)
        self.adapter_cache = model.adapter.init_cache(1)
        prompt = model.before_audio(1, session.device).to(llm.dtype)
        llm.extend(prompt, self.cache, logits_to_keep=1)
        self.prompt = prompt[0]
        self.audio: List[torch.Tensor] = []  # (n, H) adapter outputs, in order
        self.num_audio = 0
        self.chunks = 0  # chunk ends the state head has read
        self.min_chunks = replayed if session.options.min_turn_chunks is None \
            else session.options.min_turn_chunks
        self.fed_samples = 0
        if preroll is not None and len(preroll):
            # the audio just before the branch's first tick: its chunks then end where the
            # session's ticks end (DuplexSession.tick_offset); too short to complete a chunk
            self.feed(preroll)
            self.fed_samples = 0

    @torch.no_grad()
    def feed(self, samples: np.ndarray, final: bool = False) -> List[torch.Tensor]:
        """Listen to more audio; returns the state probabilities (3,) of each chunk end."""
        session, model, llm = self.session, self.session.model, self.session.llm
        self.fed_samples += len(samples)
        pieces = [self.frontend.push(samples)] if len(samples) else []
        if final:
            pieces.append(self.frontend.flush())
        feats = torch.cat(pieces, dim=1) if pieces else \
            torch.zeros(1, 0, model.frontend.output_size())
        if feats.size(1) == 0 and not final:
            return []
        if feats.size(1) and model.normalize is not None:
            feats, _ = model.normalize(feats, torch.tensor([feats.size(1)]))
        feats = feats.to(session.device)
        enc, self.encoder_state = model.encoder.forward_chunk(
            feats, self.encoder_state, is_final=final)
        if enc.size(1) == 0:
            return []
        emb, self.adapter_cache = model.adapter.forward_chunk(enc, self.adapter_cache)
        if emb.size(1) == 0:
            return []
        emb = emb.to(llm.dtype)
        per = model.embeddings_per_chunk
        ends = [j for j in range(emb.size(1)) if (self.num_audio + j + 1) % per == 0]
        if final and (self.num_audio + emb.size(1)) % per != 0:
            ends.append(emb.size(1) - 1)  # a final partial chunk is judged too
        out = llm.extend(emb, self.cache)
        self.audio.append(emb[0])
        self.num_audio += emb.size(1)
        self._bound_turn()
        if not ends:
            return []
        probs = torch.softmax(model.state_logits(out.hidden[0, ends]).float(), dim=-1)
        self.chunks += len(ends)
        return list(probs.cpu())

    def _bound_turn(self) -> None:
        """A turn longer than max_turn_seconds keeps its last half (documented policy)."""
        session = self.session
        limit = session.max_turn_positions
        if self.num_audio <= limit:
            return
        audio = torch.cat(self.audio)[-(limit // 2):]
        llm = session.llm
        self.cache.crop(self.base_length - llm.cache_length(self.cache))
        llm.extend(torch.cat([self.prompt, audio])[None], self.cache, logits_to_keep=1)
        self.audio, self.num_audio = [audio], audio.size(0)
        session.stats["turns_trimmed"] += 1

    def user_embeds(self, suffix: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.prompt] + self.audio + [suffix])


class _Answer:
    """One assistant turn: LLM tokens (pick_token) -> segments -> codec tokens -> PCM packets."""

    def __init__(self, session: "DuplexSession", answer_id: int, cache, turn: _Turn,
                 decided_at: float):
        from espnet_freeze_omni.inference.text_segmenter import TextSegmenter

        self.session = session
        self.id = answer_id
        self.cache = cache  # the branch's cache; the chat suffix is fed by the first step
        self.turn = turn
        self.start_length: Optional[int] = None  # cache length before the first answer token
        self._last = None  # LLM output whose prediction is not taken yet
        self.tokens: List[int] = []
        self.fed = 0  # answer tokens in the cache
        self.text = ""
        self.llm_done = False
        self.finalized = False
        self.segmenter = TextSegmenter(session.llm.tokenizer, session.s2s.min_segment_tokens,
                                       session.s2s.long_segment_tokens)
        self.queue: Deque = collections.deque()  # complete segments not voiced yet
        self.segments: List[Dict[str, Any]] = []  # voiced or voicing: token span, first play
        self._codes = None  # codec-token generator of the segment being voiced
        self._packets = None
        # audio sent and maybe not yet played: (play_at, pcm, segment), oldest first
        self.played: Deque = collections.deque()
        # audio not sent because the answer is paused: (pcm, segment), in order
        self.held: List = []
        self.done_pending = False  # generated to the end while paused: answer_done waits
        self.timings: Dict[str, float] = {"decision": decided_at}
        self.compute: Dict[str, float] = collections.defaultdict(float)

    @property
    def generating(self) -> bool:
        return not (self.llm_done and not self.queue and self._codes is None)

    # ------------------------------------------------------------------ one unit of work
    @torch.no_grad()
    def step(self) -> List[SessionEvent]:
        session = self.session
        ahead = session.playback_end - session.clock + self.held_seconds
        speech_ready = self._codes is not None or bool(self.queue)
        if speech_ready and (self.llm_done or ahead < session.speech_priority_s):
            return self._speech_step()
        if not self.llm_done:
            return self._llm_step()
        return []

    def _open(self) -> None:
        """Feed the chat suffix (closing of the user turn, opening of the answer)."""
        if self.start_length is None:
            llm = self.session.llm
            self._last = llm.extend(self.session.suffix_embeds, self.cache, logits_to_keep=1)
            self.start_length = llm.cache_length(self.cache)

    def _llm_step(self) -> List[SessionEvent]:
        session, llm = self.session, self.session.llm
        t0 = time.perf_counter()
        self._open()
        if self._last is not None:  # the suffix predicted the first token
            out, self._last = self._last, None
        else:
            ids = torch.tensor([[self.tokens[-1]]], device=session.device)
            out = llm.extend(llm.embed_tokens(ids), self.cache, logits_to_keep=1)
            self.fed += 1
        token = session.pick_token(out.logits[0, -1])
        events = []
        if token in session.stop_ids or len(self.tokens) >= session.max_new_tokens:
            self.llm_done = True
            last = self.segmenter.flush()
            if last is not None:
                self.queue.append(last)
                self._stamp("first_segment")
        else:
            self.tokens.append(token)
            before = self.text
            segments = self.segmenter.push(token, hidden=out.hidden[0, -1])
            self.text = llm.tokenizer.decode(self.tokens, skip_special_tokens=True)
            self.queue.extend(segments)
            session.charge(t0, self.compute, "llm")
            self._stamp("first_token")
            if segments:
                self._stamp("first_segment")
            delta = self.text[len(before):] if self.text.startswith(before) else self.text
            events.append(session.event("text", answer_id=self.id, token_id=token, delta=delta))
            return events
        session.charge(t0, self.compute, "llm")
        if not self.generating:
            events += self._finish()
        return events

    def _speech_step(self) -> List[SessionEvent]:
        from espnet_freeze_omni.codec.packets import PacketDecoder
        from espnet_freeze_omni.inference.speech_synthesis import generate_codec_tokens

        session = self.session
        synth = session.s2s.synthesizer
        t0 = time.perf_counter()
        if self._codes is None:
            segment = self.queue.popleft()
            text_embeds, prefix = synth.segment_inputs(segment.token_ids, segment.hidden_states)
            self._codes = generate_codec_tokens(
                synth.decoder, text_embeds, prefix, top_k=synth.top_k,
                max_tokens=synth.max_tokens, generator=session.generator,
                guidance_scale=synth.guidance_scale)
            self._packets = PacketDecoder(session.s2s.codec, **synth.packet_conf)
            start = sum(len(s["token_ids"]) for s in self.segments)
            self.segments.append({"index": segment.index, "token_ids": segment.token_ids,
                                  "start": start, "text": segment.text, "first_play": None,
                                  "prefilled": False})
        current = self.segments[-1]
        try:
            code = next(self._codes)
        except StopIteration:
            code = None
        if not current["prefilled"]:
            current["prefilled"] = True
            session.charge(t0, self.compute, "decoder_prefill")
            self._stamp("decoder_prefill")
            t0 = time.perf_counter()
        else:
            session.charge(t0, self.compute, "decoder")
            t0 = time.perf_counter()
        if code is None:
            packets = self._packets.flush()
            self._codes = self._packets = None
        else:
            if self._packets.num_tokens + 1 == self._needed_for_first_packet():
                self._stamp("first_packet_tokens")
            packets = self._packets.push([code])
        events = []
        if packets:
            session.charge(t0, self.compute, "codec")
            for pcm in packets:
                event = self._audio_event(pcm, current)
                if event is not None:
                    events.append(event)
        if not self.generating:
            events += self._finish()
        return events

    def _needed_for_first_packet(self) -> int:
        packets = self._packets
        return packets.first_packet + packets.lookahead if packets.packets_emitted == 0 \
            and not self.segments[:-1] else -1

    def _audio_event(self, pcm, segment) -> Optional[SessionEvent]:
        """Send a packet, to play after what was sent before; held while paused (None)."""
        session = self.session
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._stamp("first_pcm")
        if session.paused_at is not None:
            self.held.append((pcm, segment))
            return None
        play_at = max(session.clock, session.playback_end)
        duration = len(pcm) / session.output_sample_rate
        session.playback_end = play_at + duration
        if segment["first_play"] is None:
            segment["first_play"] = play_at
        self.timings.setdefault("first_play", play_at)
        while self.played and self.played[0][0] + len(self.played[0][1]) \
                / session.output_sample_rate <= session.clock:
            self.played.popleft()  # played out: a pause can no longer take it back
        self.played.append((play_at, pcm, segment))
        return session.event("audio", pcm=pcm, answer_id=self.id, segment=segment["index"],
                             play_at=round(play_at, 4), duration=round(duration, 4))

    @property
    def held_seconds(self) -> float:
        return sum(len(pcm) for pcm, _ in self.held) / self.session.output_sample_rate

    def hold_unplayed(self, at: float) -> float:
        """Pause at session time `at`: what was sent to play after `at` is taken back (the
        listener stops playback there) and held, to be sent again on resume; a segment not
        begun by then counts as not voiced. Returns the seconds taken back."""
        rate = self.session.output_sample_rate
        unplayed = []
        for play_at, pcm, segment in self.played:
            if play_at + len(pcm) / rate <= at:
                continue
            unplayed.append((pcm[max(0, int(round((at - play_at) * rate))):], segment))
            if segment["first_play"] is not None and segment["first_play"] >= at:
                segment["first_play"] = None
        if self.timings.get("first_play", -1.0) >= at:
            del self.timings["first_play"]
        self.played.clear()
        self.held = unplayed + self.held
        return sum(len(pcm) for pcm, _ in unplayed) / rate

    def resume(self) -> None:
        """Send the held audio again, from now on; a finished answer is then done."""
        held, self.held = self.held, []
        for pcm, segment in held:
            self._audio_event(pcm, segment)
        if self.done_pending:
            self.done_pending = False
            self._finish()

    def _stamp(self, name: str) -> None:
        self.timings.setdefault(name, self.session.clock)

    # ------------------------------------------------------------------ ends
    def voiced_tokens(self, at: float) -> int:
        """Answer tokens whose segment had started playing at session time `at`."""
        n = 0
        for segment in self.segments:
            if segment["first_play"] is not None and segment["first_play"] < at:
                n = segment["start"] + len(segment["token_ids"])
        return n

    def voiced_text(self, at: float) -> str:
        n = self.voiced_tokens(at)
        return self.session.llm.tokenizer.decode(self.tokens[:n], skip_special_tokens=True)

    def _finish(self) -> List[SessionEvent]:
        """All tokens and audio are out: the cache becomes the dialogue history (while the
        answer is paused, `answer_done` waits for the held audio to be sent)."""
        session = self.session
        self.finalize()
        if session.paused_at is not None:
            self.done_pending = True
            return []
        done = session.event("answer_done", answer_id=self.id, status="completed",
                             text=self.text.strip(), tokens=len(self.tokens),
                             timings=self.relative_timings(),
                             compute={k: round(v, 4) for k, v in self.compute.items()})
        return [done]

    def finalize(self) -> None:
        """Feed what the cache still lacks (the last token, the end of the turn, the opening
        of the next user turn); record the turn. Idempotent."""
        if self.finalized:
            return
        session, llm = self.session, self.session.llm
        self._open()
        self._last = None
        rest = self.tokens[self.fed:] + session.turn_closing_ids
        ids = torch.tensor([rest], device=session.device)
        llm.extend(llm.embed_tokens(ids), self.cache, logits_to_keep=1)
        self.fed = len(self.tokens)
        self.turn.assistant_ids = list(self.tokens) + session.turn_closing_ids
        self.finalized = True

    def history_fork(self, voiced: int):
        """A copy of the dialogue cache as if the answer had ended after `voiced` tokens."""
        session, llm = self.session, self.session.llm
        self._open()
        kept = min(voiced, self.fed)
        fork = llm.fork_cache(self.cache, self.start_length + kept)
        rest = self.tokens[kept:voiced] + session.turn_closing_ids
        llm.extend(llm.embed_tokens(torch.tensor([rest], device=session.device)), fork,
                   logits_to_keep=1)
        return fork

    def relative_timings(self) -> Dict[str, float]:
        """Stage times in seconds after the decision (session clock)."""
        t0 = self.timings["decision"]
        return {k: round(v - t0, 4) for k, v in self.timings.items() if k != "decision"}


class DuplexSession:
    """A streaming, full-duplex spoken dialogue with a trained Freeze-Omni model.

    Build it with `Speech2Speech.session(**options)` (SessionOptions lists them). Methods:
    `feed(pcm)` -> events, `commit()` -> events (end the user turn now, as a push-to-talk
    button or OpenAI's input_audio_buffer.commit would), `flush()` -> events (end of
    input: the answer in progress is generated to the end). All events carry times on the
    session clock; `history_length`, `turns` and `stats` tell what the LLM cache holds.
    """

    @torch.no_grad()
    def __init__(self, s2s, options: Optional[SessionOptions] = None, **kwargs):
        options = dataclasses.replace(options or SessionOptions(), **kwargs).check()
        model = s2s.listener.model
        if not isinstance(model, SpokenDialogModel):
            raise ValueError("a duplex session needs a stage-3 (spoken_dialog) model")
        self.s2s = s2s
        self.options = options
        self.model = model
        self.state_rule = options.state_rule or getattr(model, "state_rule", "argmax")
        self.llm = s2s.llm
        self.template = s2s.template
        self.device = s2s.listener.device
        self.sample_rate = s2s.input_sample_rate
        self.output_sample_rate = s2s.sample_rate
        self.chunk_samples = int(round(model.chunk_seconds * self.sample_rate))
        # A chunk is complete only `chunk_lookahead_samples` past its end (the STFT window,
        # the subsampling convs): ticks end there, not at chunk ends, or every chunk would
        # wait for the next tick (160 ms) before the state head judged it. The first tick
        # is this long; a branch opened later starts this much audio before its first tick.
        self.tick_offset = s2s.listener.chunk_lookahead_samples % self.chunk_samples
        self.max_new_tokens = options.max_new_tokens or s2s.listener.max_new_tokens
        self.stop_ids = set(self.llm.eos_token_ids)
        # speech has priority over more text while less than this much audio is queued
        self.speech_priority_s = 1.0
        self.max_turn_positions = max(
            2 * model.embeddings_per_chunk,
            int(options.max_turn_seconds / model.chunk_seconds) * model.embeddings_per_chunk)
        llm_positions = int(getattr(self.llm.model.config, "max_position_embeddings", 8192))
        self.max_context_tokens = options.max_context_tokens or min(llm_positions, 8192)

        with torch.no_grad():
            system_ids = self.template.prefix_ids(system_prompt=options.system_role)
            self.system_embeds = self._embed(system_ids)[0]
            self.suffix_embeds = self._embed(self.template.suffix_ids())
        self.turn_closing_ids = self.template.answer_end_ids() + self.template.next_turn_ids()
        prompt_len = model.prompt_embeddings.num_embeddings
        self._turn_budget = (prompt_len + self.max_turn_positions + self.suffix_embeds.size(1)
                             + self.max_new_tokens + len(self.turn_closing_ids))
        if self.system_embeds.size(0) + self._turn_budget > self.max_context_tokens:
            raise ValueError(
                f"max_context_tokens {self.max_context_tokens} cannot hold the system prompt "
                f"({self.system_embeds.size(0)}) and one turn ({self._turn_budget} positions "
                f"with max_turn_seconds {options.max_turn_seconds}, max_new_tokens "
                f"{self.max_new_tokens}): raise it or lower those")
        with torch.no_grad():
            self.history = self.llm.prefill(self.system_embeds[None], logits_to_keep=1) \
                .past_key_values
        self.turns: List[_Turn] = []

        self.vad = None
        if options.vad:
            from espnet_freeze_omni.inference.vad import StreamingVAD

            self.vad = StreamingVAD(threshold=options.vad_threshold,
                                    min_silence_s=options.vad_min_silence_s,
                                    sample_rate=self.sample_rate)
        replay = int(round(options.vad_replay_s / model.chunk_seconds)) if options.vad else 0
        # ticks not heard since the last one fed: the replay at a speech start
        self._unfed: Deque[np.ndarray] = collections.deque(maxlen=replay)
        self._replay_ticks = replay
        self._pending = np.zeros(0, dtype=np.float32)
        self.consumed = 0  # input samples processed
        # the latest input before the current tick: a new branch's replay and pre-roll
        self._recent = np.zeros(0, dtype=np.float32)
        self._recent_keep = (replay + 1) * self.chunk_samples + self.tick_offset
        self.clock = 0.0
        self.playback_end = 0.0
        self.paused_at: Optional[float] = None  # session time the answer's playback paused
        self.listening: Optional[_ListenBranch] = None
        self.answer: Optional[_Answer] = None
        self._answers = 0
        self._flushed = False
        self._clearing = False  # clear() ends its partial tick unheard
        self._out: List[SessionEvent] = []
        self._in_speech = False
        self._vad_started_here = False  # a speech start not yet answered by a new branch
        # a turn was decided while the VAD was still in its speech segment (in the silence it
        # waits before it says the speech stopped): speech resuming there is a new turn,
        # though the VAD reports no new start
        self._decided_in_speech = False
        self._silent_since = 0.0  # where the VAD last heard the speech stop (s)
        # side talk was ignored while the VAD was still in its speech segment: the branch
        # that reopens on that same speech must not pause the answer again
        self._ignored_in_speech = False
        self.stats = collections.Counter()
        # codec-token sampling of this session alone: sessions sharing one model (a server)
        # neither share a random stream nor depend on each other's order
        self.generator = torch.Generator()
        self.llm_generator = torch.Generator()  # answer-token sampling (llm_sampling release)
        self.reseed("session")

    # ------------------------------------------------------------------ helpers
    def _embed(self, ids: List[int]) -> torch.Tensor:
        return self.llm.embed_tokens(torch.tensor([ids], dtype=torch.long, device=self.device))

    @property
    def audio_time(self) -> float:
        return self.consumed / self.sample_rate

    @property
    def history_length(self) -> int:
        """Positions in the dialogue's LLM cache (the answer's, while one is held)."""
        cache = self.answer.cache if self.answer is not None else self.history
        return self.llm.cache_length(cache)

    def event(self, kind: str, pcm: Optional[np.ndarray] = None, **data) -> SessionEvent:
        event = SessionEvent(kind, self.clock, self.audio_time, data, pcm)
        self._out.append(event)
        return event

    def charge(self, t0: float, bucket: Optional[Dict[str, float]] = None,
               name: str = "") -> None:
        """Count the compute since perf_counter() t0 (on the clock when it is measured)."""
        spent = time.perf_counter() - t0
        if bucket is not None:
            bucket[name] += spent
        if self.options.clock == "measured":
            self.clock += spent

    def _check_audio(self, pcm) -> np.ndarray:
        if self._flushed:
            raise RuntimeError("feed() after flush(): the session's input has ended; "
                               "start a new session")
        if isinstance(pcm, torch.Tensor):
            pcm = pcm.detach().cpu().numpy()
        pcm = np.asarray(pcm)
        if pcm.ndim != 1:
            raise ValueError(f"feed() takes mono audio as a 1-D array, got shape {pcm.shape}: "
                             "downmix first (the CLI and server convert files and streams)")
        if pcm.dtype == np.int16:
            pcm = pcm.astype(np.float32) / 32768.0
        elif np.issubdtype(pcm.dtype, np.floating):
            pcm = pcm.astype(np.float32, copy=False)
        else:
            raise ValueError(f"feed() takes float or int16 samples, got {pcm.dtype}")
        if not np.all(np.isfinite(pcm)):
            bad = int(np.flatnonzero(~np.isfinite(pcm))[0])
            raise ValueError(f"feed(): sample {bad} of this piece is {pcm[bad]} (NaN or inf); "
                             "nothing of the piece was used")
        return pcm

    # ------------------------------------------------------------------ public API
    def reseed(self, key: str) -> None:
        """Seed this session's codec-token sampling from the model's seed and `key` (e.g. an
        utterance id), so what it says does not depend on what was decoded before."""
        self.generator.manual_seed(self.s2s.seed * 1_000_003 + zlib.crc32(key.encode()))
        self.llm_generator.manual_seed(self.s2s.seed * 1_000_003
                                       + zlib.crc32(("llm/" + key).encode()))

    def pick_token(self, logits: torch.Tensor) -> int:
        """The next answer token (SessionOptions.llm_sampling; greedy by default)."""
        o = self.options
        return pick_token(logits, o.llm_sampling, o.llm_temperature, o.llm_top_k, o.llm_top_p,
                          self.llm_generator)

    @torch.no_grad()
    def pump(self, budget_seconds: float = 0.02) -> List[SessionEvent]:
        """Generate the answer in progress for about `budget_seconds` of compute (a server
        interleaves its sessions' answers this way; `feed` alone generates only as the
        clock allows, see the module docstring)."""
        deadline = time.perf_counter() + budget_seconds
        while self.answer is not None and self.answer.generating \
                and time.perf_counter() < deadline:
            self.answer.step()
        return self._take()

    @torch.no_grad()
    def feed(self, pcm) -> List[SessionEvent]:
        """Take input audio (16 kHz mono, any length); return the events it caused."""
        pcm = self._check_audio(pcm)
        self._pending = np.concatenate([self._pending, pcm])
        while True:
            n = self.chunk_samples if self.consumed >= self.tick_offset \
                else self.tick_offset - self.consumed
            if len(self._pending) < n:
                break
            tick, self._pending = self._pending[:n], self._pending[n:]
            self._tick(tick)
        return self._take()

    @torch.no_grad()
    def commit(self) -> List[SessionEvent]:
        """End the user's turn now and answer it (what `turn_detection="manual"` waits for).

        The audio not yet making up a whole tick ends the turn's audio."""
        if self._flushed:
            raise RuntimeError("commit() after flush(): the session's input has ended")
        tail, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        heard, answers = self.listening, self._answers
        # the last tick (and the silence replayed before it) may make the state head decide
        self._tick(tail, final=True)
        if self._answers != answers:
            pass  # it said respond: the turn is being answered already
        else:
            if self.listening is None and heard is not None:
                self.listening = heard  # it said ignore: the explicit commit overrules it
            if self.listening is None and self._unfed:
                self._open_branch(replay=True)
            branch = self.listening
            # (a branch opened here on no audio has heard only its pre-roll)
            if branch is None or branch.num_audio == 0 or branch.fed_samples == 0:
                raise ValueError("commit(): no user audio has been heard since the last turn")
            self._decide(STATE_RESPOND, forced=True)
        if self.options.answer_in_feed:
            self._catch_up(None if self.options.clock == "audio" else self.clock)
        return self._take()

    @torch.no_grad()
    def flush(self) -> List[SessionEvent]:
        """End of input: the last partial tick is listened to, the answer in progress is
        finished (audio included). An undecided turn stays unanswered (commit() first to
        answer it)."""
        if self._flushed:
            raise RuntimeError("flush() was already called")
        tail, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        if len(tail):
            self._tick(tail, final=False)
        if self.vad is not None:
            for ev in self.vad.flush():
                self._vad_event(ev)
        self._flushed = True
        self._resume()  # nobody is left to decide on the speech that paused it
        self._catch_up(None)
        if self.answer is not None:
            self.answer.finalize()
        return self._take()

    @torch.no_grad()
    def cancel(self) -> List[SessionEvent]:
        """Stop the answer in progress now, as a barge-in would stop it (a stop button,
        OpenAI's response.cancel): `interrupted`, and `answer_done` with status "interrupted"
        while it was still generating. The history keeps the answer as far as it was voiced
        (as far as a barge-in branch already open keeps it, so that branch stays valid). An
        answer fully played is retired instead; without an answer nothing happens."""
        self._cancel_answer()
        return self._take()

    def _cancel_answer(self) -> None:
        self._retire_answer()
        answer = self.answer
        if answer is None:
            return
        branch = self.listening
        voiced = branch.fork_voiced if branch is not None and branch.fork_voiced is not None \
            else answer.voiced_tokens(self.clock)
        t0 = time.perf_counter()
        self.history = answer.history_fork(voiced)
        self._interrupt()
        answer.turn.assistant_ids = answer.tokens[:voiced] + self.turn_closing_ids
        self.charge(t0)

    def clear(self) -> List[SessionEvent]:
        """Forget the user turn being listened to (OpenAI's input_audio_buffer.clear): it is
        dropped as an ignored turn is, and so is the audio kept for a replay; an answer in
        progress goes on. With VAD the next turn opens at the next speech start. (A partial
        tick ends there: its audio stays on the stream clock, and is never heard.)"""
        self.listening = None
        tail, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        if len(tail):
            self._clearing = True
            try:
                self._tick(tail)
            finally:
                self._clearing = False
        # the next turn's pre-roll must not hear what came before either: silence instead
        self._recent = np.zeros_like(self._recent)
        self._unfed.clear()
        self._vad_started_here = False
        self._resume()
        return self._take()

    @torch.no_grad()
    def text_turn(self, text: str) -> List[SessionEvent]:
        """A typed user turn (a server's conversation.item.create with input_text, then
        response.create), answered at once as a spoken turn is at the state head's decision.

        Its tokens enter the dialogue's LLM cache as the text-in model reads a question
        (chat_template.question_ids), so the answer is the one `Speech2Speech.answer_text`
        gives with the same history; later turns, spoken or typed, extend that cache. An
        answer in progress is cut where it was voiced (as cancel() cuts it); a spoken turn
        being listened to is dropped, as clear() drops it."""
        if self._flushed:
            raise RuntimeError("text_turn() after flush(): the session's input has ended")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text_turn(): the turn's text is empty")
        ids = self.template.question_ids(text.strip())
        if len(ids) > self.max_turn_positions:
            raise ValueError(f"text_turn(): the text is {len(ids)} tokens long; a turn holds "
                             f"at most {self.max_turn_positions} (max_turn_seconds "
                             f"{self.options.max_turn_seconds})")
        self._cancel_answer()
        self._unfed.clear()
        self.listening = None
        self._vad_started_here = False
        t0 = time.perf_counter()
        self.history = self._bounded(self.history)
        cache = self.llm.fork_cache(self.history)
        question = self._embed(ids)[0]
        self.llm.extend(question[None], cache, logits_to_keep=1)
        self.charge(t0)
        self.event("turn_ended", opened_at=round(self.clock, 4), forced=True,
                   heard_seconds=0.0, text=text.strip())
        turn = _Turn(torch.cat([question, self.suffix_embeds[0]]).detach(), [])
        self.turns.append(turn)
        self._answers += 1
        self.answer = _Answer(self, self._answers, cache, turn, self.clock)
        if self.options.answer_in_feed:
            self._catch_up(None if self.options.clock == "audio" else self.clock)
        return self._take()

    def _take(self) -> List[SessionEvent]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ the loop
    def _catch_up(self, until: Optional[float]) -> None:
        """Generate the answer until the clock reaches `until` (None: to the end)."""
        while self.answer is not None and self.answer.generating:
            if until is not None and self.clock >= until:
                return
            self.answer.step()
            if self.options.clock == "audio" and until is not None:
                return  # compute takes no time: one step per call would never catch up

    def _tick(self, samples: np.ndarray, final: bool = False) -> None:
        """One tick of input (a chunk, or a shorter tail)."""
        start = self.consumed
        arrival = (start + len(samples)) / self.sample_rate
        # the worker generates until this tick has arrived; compute-free, it is all done
        if self.options.answer_in_feed:
            self._catch_up(arrival if self.options.clock == "measured" else None)
        self.clock = max(self.clock, arrival)
        self.consumed += len(samples)
        self._refork_without_vad()
        self._retire_answer()
        t0 = time.perf_counter()
        vad_events = self.vad.push(samples) if self.vad is not None and len(samples) else []
        self.charge(t0)
        for ev in vad_events:
            self._vad_event(ev)
        heard = self.vad is None or self._in_speech or bool(vad_events)
        if self.listening is None and self._may_open(heard):
            if self.answer is not None and not self._vad_started_here \
                    and not self._ignored_in_speech:
                self._speech_over_answer()  # speech resumed in the VAD's silence: no new start
            self._open_branch(replay=self.vad is not None)
        if self.listening is not None and (heard or final):
            self._listen(samples, final)
        elif len(samples):
            self._unfed.append(samples)
            self._commit_after_silence()
        if self.options.clock == "audio" and self.options.answer_in_feed:
            self._catch_up(None)
        if len(samples):
            self._recent = np.concatenate([self._recent, samples])[-self._recent_keep:]

    def _may_open(self, heard: bool) -> bool:
        if self._flushed or self._clearing:
            return False
        if self.answer is not None and not self.options.barge_in:
            return False
        if self.vad is None:
            return True
        return self._vad_started_here or (self._decided_in_speech and self.vad.hearing_speech)

    def _commit_after_silence(self) -> None:
        limit = self.options.commit_after_silence_s
        branch = self.listening
        if limit is None or branch is None or branch.num_audio == 0 or self._in_speech:
            return
        if self.audio_time - self._silent_since >= limit:
            self._decide(STATE_RESPOND, forced=True)

    def _vad_event(self, ev) -> None:
        when = ev.sample / self.sample_rate
        if ev.kind == "speech_stopped":
            self._silent_since = when
            self._decided_in_speech = False
            self._ignored_in_speech = False
        if ev.kind == "speech_started":
            self._in_speech = True
            self._vad_started_here = True
            self.event("speech_started", at=round(when, 4))
            if self.answer is not None:
                self._speech_over_answer()
        else:
            self._in_speech = False
            self.event("speech_stopped", at=round(when, 4))
            if (self.options.turn_detection == "vad" and self.listening is not None
                    and self.listening.num_audio):
                self._decide(STATE_RESPOND, forced=True)
            # the speech that paused the answer ended and nothing took the turn
            self._resume()

    def _speech_over_answer(self) -> None:
        """The user started speaking while an answer is out: cut it (interrupt_on_speech),
        pause it (pause_on_speech) or let it play on (the state head alone decides)."""
        if not self.options.barge_in or self.vad is None:
            return  # without VAD nothing tells speech from silence: the state head decides
        if self.options.interrupt_on_speech:
            self._cancel_answer()
        elif self.options.pause_on_speech:
            self._pause()

    def _pause(self) -> None:
        """Stop the answer's playback now and hold the rest (module docstring)."""
        answer, now = self.answer, self.clock
        if answer is None or self.paused_at is not None:
            return
        if not answer.generating and self.playback_end <= now:
            return  # played out already: nothing to pause
        taken_back = answer.hold_unplayed(now)
        self.playback_end = min(self.playback_end, now)
        self.paused_at = now
        self.stats["pauses"] += 1
        self.event("paused", answer_id=answer.id, voiced_text=answer.voiced_text(now).strip(),
                   voiced_tokens=answer.voiced_tokens(now),
                   taken_back_seconds=round(taken_back, 4))

    def _resume(self) -> None:
        """The speech over the answer was not a turn: the answer plays on from where it
        paused (its held audio is sent again from now)."""
        if self.paused_at is None:
            return
        paused_at, self.paused_at = self.paused_at, None
        if self.answer is None:
            return
        self.event("resumed", answer_id=self.answer.id,
                   paused_seconds=round(self.clock - paused_at, 4))
        self.answer.resume()

    def _open_branch(self, replay: bool) -> None:
        self._vad_started_here = False
        self._decided_in_speech = False
        t0 = time.perf_counter()
        fork_voiced = None
        if self.answer is not None:
            fork_voiced = self.answer.voiced_tokens(self.clock)
            cache = self._bounded(self.answer.history_fork(fork_voiced),
                                  self.answer.tokens[:fork_voiced] + self.turn_closing_ids)
        else:
            self.history = self._bounded(self.history)
            cache = self.llm.fork_cache(self.history)
        ticks = list(self._unfed) if replay else []
        self._unfed.clear()
        # the replayed ticks are the latest audio before the current tick (commit(): up to
        # its end): the pre-roll is what came just before them
        first = len(self._recent) - sum(len(t) for t in ticks)
        preroll = self._recent[max(0, first - self.tick_offset):max(0, first)]
        self.listening = _ListenBranch(self, cache, self.clock, len(ticks), fork_voiced,
                                       preroll=preroll)
        self.charge(t0)
        for tick in ticks:
            self._listen(tick, final=False)
            if self.listening is None:
                break

    def _listen(self, samples: np.ndarray, final: bool) -> None:
        if self._unfed and self.listening is not None and self.listening.fed_samples:
            # speech resumed after a pause inside the turn: what was not heard comes first
            gap = list(self._unfed)
            self._unfed.clear()
            for tick in gap:
                self._listen(tick, final=False)
                if self.listening is None:
                    return
        branch = self.listening
        t0 = time.perf_counter()
        probs = branch.feed(samples, final=final)
        self.charge(t0)
        self.stats["ticks_heard"] += 1
        first = branch.chunks - len(probs)
        threshold = self.options.respond_threshold
        for i, p in enumerate(probs):
            state = decide_state(p, self.state_rule)
            if threshold is not None and float(p[STATE_RESPOND]) >= threshold:
                state = STATE_RESPOND
            self.event("state", state=STATE_NAMES[state], chunk=first + i,
                       probs=[round(float(x), 4) for x in p])
            if first + i < branch.min_chunks or state == STATE_LISTEN:
                continue
            if self.options.turn_detection != "state_head":
                continue
            if state == STATE_RESPOND and self.vad is not None and self.vad.hearing_speech:
                # the user is audibly still speaking in this tick: the turn has not ended
                # (a head that judges the end from the words alone may say so in the last
                # phoneme); the head is asked again at the next chunk
                self.stats["respond_held_in_speech"] += 1
                continue
            self._decide(state)
            return

    def _decide(self, state: int, forced: bool = False) -> None:
        branch = self.listening
        if self.vad is not None and self._in_speech:
            self._decided_in_speech = True
        if state == STATE_IGNORE:
            self.listening = None
            self._ignored_in_speech = self.vad is not None and self._in_speech
            self.event("ignored", opened_at=round(branch.opened_at, 4))
            self._resume()
            return
        # respond: the turn ended; an answer still playing is cut here
        self.listening = None
        self._ignored_in_speech = False
        if self.answer is not None:
            self._interrupt()
        if branch.fork_voiced is not None and self.turns:
            # the base of a barge-in branch holds the previous answer as far as it was voiced
            previous = self.turns[-1]
            answer_ids = previous.assistant_ids[:-len(self.turn_closing_ids)] \
                if previous.assistant_ids else []
            previous.assistant_ids = answer_ids[:branch.fork_voiced] + self.turn_closing_ids
        self.event("turn_ended", opened_at=round(branch.opened_at, 4), forced=forced,
                   heard_seconds=round(branch.fed_samples / self.sample_rate, 4))
        turn = _Turn(branch.user_embeds(self.suffix_embeds[0]).detach(), [])
        self.turns.append(turn)
        self._answers += 1
        self.answer = _Answer(self, self._answers, branch.cache, turn, self.clock)

    def _interrupt(self) -> None:
        answer = self.answer
        now = self.clock
        voiced = answer.voiced_text(now)
        heard = max(0.0, min(now, self.playback_end) - answer.timings.get("first_play", now))
        paused, self.paused_at = self.paused_at, None
        if answer.generating or self.playback_end > now or answer.held or answer.done_pending:
            self.event("interrupted", answer_id=answer.id, voiced_text=voiced.strip(),
                       voiced_tokens=answer.voiced_tokens(now), heard_seconds=round(heard, 4),
                       **({} if paused is None else {"paused_at": round(paused, 4)}))
            if answer.generating or answer.done_pending:
                answer.turn.assistant_ids = (answer.tokens + self.turn_closing_ids)
                self.event("answer_done", answer_id=answer.id, status="interrupted",
                           text=answer.text.strip(), tokens=len(answer.tokens),
                           timings=answer.relative_timings())
            self.stats["interruptions"] += 1
        self.playback_end = min(self.playback_end, now)
        self.answer = None

    def _refork_without_vad(self) -> None:
        """Without VAD a barge-in branch is open all through an answer, so its base would
        keep the answer as voiced when the answer began: it starts again (its audio heard so
        far dropped) each time another segment starts playing, and as a new turn on the full
        history once the answer has played out. With VAD a branch opens on speech only and
        is never dropped this way."""
        branch = self.listening
        if self.vad is not None or branch is None or branch.fork_voiced is None:
            return
        if self.answer is None or self.answer.voiced_tokens(self.clock) > branch.fork_voiced:
            # (an answer that has played out counts every token as voiced)
            self.listening = None
            self.stats["barge_in_reforks"] += 1

    def _retire_answer(self) -> None:
        """An answer fully generated and played: its cache is the history from now on."""
        answer = self.answer
        if answer is not None and not answer.generating and self.playback_end <= self.clock \
                and self.paused_at is None:
            answer.finalize()
            self.history = answer.cache
            self.answer = None

    def _bounded(self, cache, last_answer_ids: Optional[List[int]] = None):
        """`cache`, or when the next turn might not fit, the history prefilled again without
        its oldest turns (module docstring). `last_answer_ids` stand for the last turn's
        answer when it is still being spoken (what a barge-in branch keeps of it)."""
        if self.llm.cache_length(cache) + self._turn_budget <= self.max_context_tokens:
            return cache
        t0 = time.perf_counter()
        budget = self.max_context_tokens - self._turn_budget - self.system_embeds.size(0)
        answers = [t.assistant_ids for t in self.turns]
        if last_answer_ids is not None and answers:
            answers[-1] = last_answer_ids
        kept, total = 0, 0
        for turn, ids in zip(reversed(self.turns), reversed(answers)):
            if total + turn.user_embeds.size(0) + len(ids) > budget:
                break
            kept += 1
            total += turn.user_embeds.size(0) + len(ids)
        dropped = len(self.turns) - kept
        self.stats["turns_dropped"] += dropped
        self.turns, answers = self.turns[dropped:], answers[dropped:]
        pieces = [self.system_embeds]
        for turn, ids in zip(self.turns, answers):
            pieces += [turn.user_embeds, self._embed(ids)[0]]
        cache = self.llm.prefill(torch.cat(pieces)[None], logits_to_keep=1).past_key_values
        self.charge(t0)
        return cache
