"""The OpenAI Realtime subset this server speaks: session configuration and event shapes.

Field names follow the GA Realtime API (the `openai` package's types/realtime): a session is
configured with `session.update` {"session": {"type": "realtime", "instructions": ...,
"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": ...},
"output": {"format": ...}}}}; the beta spellings (`input_audio_format: "pcm16"`, a top-level
`turn_detection`) are read too. How the options map onto a DuplexSession:

    instructions                 system_role (the system prompt the history starts with)
    turn_detection null          turn_detection="manual", vad=False: only commit ends a turn
    {"type": "server_vad"}       turn_detection="vad": the turn ends when the VAD hears
                                 silence_duration_ms of silence (threshold, prefix_padding_ms
                                 = the replay, interrupt_response (default true) = the
                                 answer stops at the user's speech start: interrupt_on_speech)
    {"type": "semantic_vad"}     turn_detection="state_head" (the default, the paper): the
                                 model's state head ends the turn; eagerness sets the fallback
                                 commit after silence (low 8 s, medium/auto 4 s, high 2 s)
    "freeze_omni": {...}         extension: SessionOptions fields listed in EXTENSION_OPTIONS
                                 (e.g. {"vad": true} with turn_detection null: push-to-talk
                                 whose silences the LLM does not listen to)

Input audio is PCM16 at 24 kHz (the API's default) or 16 kHz (the model's own rate, no
resampling); output audio is PCM16 at 24 kHz. Fields of the API that do not apply to this
model (voice, tools, tracing, transcription, noise reduction, ...) are accepted and ignored.
"""
from __future__ import annotations

import copy
import dataclasses
import secrets
from typing import Any, Dict, Optional

INPUT_RATES = (16000, 24000)
OUTPUT_RATE = 24000
# semantic_vad eagerness -> seconds of silence after which an undecided turn is answered
# (the API documents these as the eagerness levels' maximum timeouts)
EAGERNESS_TIMEOUT_S = {"low": 8.0, "medium": 4.0, "auto": 4.0, "high": 2.0}
# SessionOptions a client may set under session.freeze_omni, with their types
EXTENSION_OPTIONS = {
    "vad": (bool,),  # with turn_detection null: the VAD still gates what the LLM hears
    "commit_after_silence_s": (float, type(None)),
    "vad_threshold": (float,),
    "vad_min_silence_s": (float,),
    "vad_replay_s": (float,),
    "min_turn_chunks": (int, type(None)),
    "barge_in": (bool,),
    "interrupt_on_speech": (bool,),
    "pause_on_speech": (bool,),
    "max_new_tokens": (int, type(None)),
    "max_turn_seconds": (float,),
}


class ProtocolError(Exception):
    """A client event the server refuses: becomes an `error` event with this code."""

    def __init__(self, code: str, message: str, param: Optional[str] = None,
                 error_type: str = "invalid_request_error"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclasses.dataclass
class SessionConfig:
    """What a connection's client has configured, in the API's terms."""

    model: str
    instructions: Optional[str] = None
    input_rate: int = 24000
    turn_detection: Optional[Dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {"type": "semantic_vad", "eagerness": "auto"})
    extension: Dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str = dataclasses.field(default_factory=lambda: new_id("sess"))

    # ------------------------------------------------------------------ to the session
    def session_options(self) -> Dict[str, Any]:
        """Keyword arguments of Speech2Speech.session() for this configuration."""
        # the session listens in feed(); its answer is generated only when the server's
        # scheduler pumps it; the clock follows the stream and the session's own compute
        options: Dict[str, Any] = {"system_role": self.instructions or None,
                                   "clock": "measured", "answer_in_feed": False}
        detection = self.turn_detection
        if detection is None:
            options.update(vad=False, turn_detection="manual")
        elif detection["type"] == "server_vad":
            options.update(vad=True, turn_detection="vad")
            if detection.get("threshold") is not None:
                options["vad_threshold"] = float(detection["threshold"])
            if detection.get("silence_duration_ms") is not None:
                options["vad_min_silence_s"] = detection["silence_duration_ms"] / 1000.0
            if detection.get("prefix_padding_ms") is not None:
                options["vad_replay_s"] = detection["prefix_padding_ms"] / 1000.0
            # as the API's server VAD: an answer stops when the user starts speaking
            options["interrupt_on_speech"] = detection.get("interrupt_response") is not False
        else:  # semantic_vad: the state head
            options.update(vad=True, turn_detection="state_head",
                           commit_after_silence_s=EAGERNESS_TIMEOUT_S[
                               detection.get("eagerness") or "auto"])
        if detection is not None and detection.get("interrupt_response") is not None:
            options["barge_in"] = bool(detection["interrupt_response"])
        options.update(self.extension)
        return options

    # ------------------------------------------------------------------ to the client
    def describe(self) -> Dict[str, Any]:
        """The session object of session.created / session.updated."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": ["audio"],
            "instructions": self.instructions or "",
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": self.input_rate},
                          "turn_detection": copy.deepcopy(self.turn_detection)},
                "output": {"format": {"type": "audio/pcm", "rate": OUTPUT_RATE}},
            },
            "freeze_omni": dict(self.extension),
        }

    # ------------------------------------------------------------------ from the client
    def updated(self, session: Any) -> "SessionConfig":
        """A copy with a session.update's `session` applied; ProtocolError if invalid."""
        if not isinstance(session, dict):
            raise ProtocolError("invalid_value", "session.update needs a `session` object",
                                "session")
        new = dataclasses.replace(self, turn_detection=copy.deepcopy(self.turn_detection),
                                  extension=dict(self.extension))
        if session.get("type", "realtime") != "realtime":
            raise ProtocolError("unsupported_session_type",
                                f"session type {session.get('type')!r} is not served: only "
                                "'realtime' (speech in, speech out)", "session.type")
        if "instructions" in session:
            if not isinstance(session["instructions"], (str, type(None))):
                raise ProtocolError("invalid_value", "instructions must be a string",
                                    "session.instructions")
            new.instructions = session["instructions"] or None
        modalities = session.get("output_modalities", session.get("modalities"))
        if modalities is not None and "audio" not in modalities:
            raise ProtocolError("unsupported_modalities",
                                "this model always answers in speech (with its transcript): "
                                "output_modalities must include 'audio'",
                                "session.output_modalities")
        audio = session.get("audio") or {}
        if not isinstance(audio, dict):
            raise ProtocolError("invalid_value", "session.audio must be an object",
                                "session.audio")
        audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
        if "format" in audio_in:
            new.input_rate = _pcm_rate(audio_in["format"], "session.audio.input.format",
                                       INPUT_RATES)
        if "input_audio_format" in session:  # beta spelling
            new.input_rate = _pcm_rate(session["input_audio_format"],
                                       "session.input_audio_format", INPUT_RATES)
        if "format" in audio_out:
            _pcm_rate(audio_out["format"], "session.audio.output.format", (OUTPUT_RATE,))
        if "output_audio_format" in session:
            _pcm_rate(session["output_audio_format"], "session.output_audio_format",
                      (OUTPUT_RATE,))
        if "turn_detection" in audio_in:
            new.turn_detection = _turn_detection(audio_in["turn_detection"],
                                                 "session.audio.input.turn_detection")
        elif "turn_detection" in session:  # beta spelling
            new.turn_detection = _turn_detection(session["turn_detection"],
                                                 "session.turn_detection")
        max_tokens = session.get("max_output_tokens", session.get("max_response_output_tokens"))
        if isinstance(max_tokens, int) and max_tokens > 0:
            new.extension["max_new_tokens"] = max_tokens
        elif max_tokens == "inf":
            new.extension.pop("max_new_tokens", None)
        extension = session.get("freeze_omni")
        if extension is not None:
            new.extension.update(_extension(extension))
        return new


def _pcm_rate(fmt: Any, param: str, rates) -> int:
    """The sample rate of an audio format (GA object or beta string); PCM16 only."""
    if fmt == "pcm16":
        fmt = {"type": "audio/pcm", "rate": 24000}
    if not isinstance(fmt, dict) or fmt.get("type", "audio/pcm") != "audio/pcm":
        raise ProtocolError("unsupported_audio_format",
                            f"audio format {fmt!r} is not served: use "
                            f"{{'type': 'audio/pcm', 'rate': {rates[-1]}}} (PCM16, mono)", param)
    rate = fmt.get("rate", 24000)
    if rate not in rates:
        raise ProtocolError("unsupported_sample_rate",
                            f"sample rate {rate!r} is not served here: use one of "
                            f"{', '.join(map(str, rates))} Hz", param + ".rate")
    return int(rate)


def _turn_detection(value: Any, param: str) -> Optional[Dict[str, Any]]:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("server_vad", "semantic_vad"):
        raise ProtocolError("invalid_value", "turn_detection must be null, "
                            "{'type': 'server_vad', ...} or {'type': 'semantic_vad', ...}",
                            param)
    if value.get("create_response") is False:
        raise ProtocolError("unsupported_value",
                            "create_response=false is not served: a turn the session ends is "
                            "always answered (use turn_detection null and commit to decide "
                            "yourself)", param + ".create_response")
    threshold = value.get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float))
                                      and 0.0 < threshold < 1.0):
        raise ProtocolError("invalid_value", f"threshold must be in (0, 1), got {threshold!r}",
                            param + ".threshold")
    for key in ("silence_duration_ms", "prefix_padding_ms"):
        if value.get(key) is not None and not (isinstance(value[key], int) and value[key] >= 0):
            raise ProtocolError("invalid_value", f"{key} must be an integer >= 0",
                                f"{param}.{key}")
    eagerness = value.get("eagerness")
    if eagerness is not None and eagerness not in EAGERNESS_TIMEOUT_S:
        raise ProtocolError("invalid_value", f"eagerness must be one of "
                            f"{sorted(EAGERNESS_TIMEOUT_S)}", param + ".eagerness")
    keep = ("type", "threshold", "silence_duration_ms", "prefix_padding_ms", "eagerness",
            "interrupt_response", "create_response")
    return {k: v for k, v in value.items() if k in keep}


def _extension(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError("invalid_value", "session.freeze_omni must be an object",
                            "session.freeze_omni")
    out = {}
    for key, option in value.items():
        if key not in EXTENSION_OPTIONS:
            raise ProtocolError("unknown_option", f"session.freeze_omni.{key} is not an option: "
                                f"one of {', '.join(EXTENSION_OPTIONS)}",
                                f"session.freeze_omni.{key}")
        kinds = EXTENSION_OPTIONS[key]
        if float in kinds and isinstance(option, int) and not isinstance(option, bool):
            option = float(option)
        if not isinstance(option, kinds) or (isinstance(option, bool) and bool not in kinds):
            raise ProtocolError("invalid_value", f"session.freeze_omni.{key} has the wrong type",
                                f"session.freeze_omni.{key}")
        out[key] = option
    return out


# ---------------------------------------------------------------------------- server events
def server_event(kind: str, **fields) -> Dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(code: str, message: str, event_id: Optional[str] = None,
                param: Optional[str] = None,
                error_type: str = "invalid_request_error") -> Dict[str, Any]:
    return server_event("error", error={"type": error_type, "code": code, "message": message,
                                        "param": param, "event_id": event_id})


def response_object(response_id: str, status: str, item_id: str, transcript: str = "",
                    reason: Optional[str] = None) -> Dict[str, Any]:
    """A `realtime.response` resource (without audio, as response.done carries it)."""
    item_status = "in_progress" if status == "in_progress" else (
        "completed" if status == "completed" else "incomplete")
    output = [] if status == "in_progress" else [{
        "id": item_id, "type": "message", "object": "realtime.item", "role": "assistant",
        "status": item_status,
        "content": [{"type": "output_audio", "transcript": transcript}],
    }]
    details = None
    if status != "in_progress":
        details = {"type": status, "reason": reason} if reason else {"type": status}
    return {"id": response_id, "object": "realtime.response", "status": status,
            "status_details": details, "output": output, "output_modalities": ["audio"],
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": OUTPUT_RATE}}}}
