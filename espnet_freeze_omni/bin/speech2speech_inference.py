#!/usr/bin/env python3
"""Decode a test set with the whole Freeze-Omni model (recipe stage 15).

    python -m espnet_freeze_omni.bin.speech2speech_inference --ngpu 0 --config conf/decode.yaml \
        --llm_conf path=exp/llm \
        --speech_input_model exp/speech_input_stage3/valid.loss.best.pth \
        --speech_output_model exp/speech_output_stage3/valid.loss.best.pth \
        --codec_dir exp/codec \
        --data_path_and_name_and_type dump/raw16k/qa_test/wav.scp,speech,sound \
        --key_file exp/decode/qa_test/logdir/keys.1.scp \
        --output_dir exp/decode/qa_test/logdir/output.1 \
        [--qa_refs data/qa_test/refs.jsonl] [--history_mode session|own|none] \
        [--outputs asr_ctc ...]

Writes under --output_dir, one line per utterance of --key_file (`--outputs` picks which):
    asr_ctc/text             CTC transcript
    asr_llm/text             transcript through the frozen LLM
    text_in/text             the LLM's answer to the TEXT question (from --qa_refs
                             {"id", "question", "answers"} by utterance id, else the data
                             dir's `text`)
    speech_in/text           the answer to the spoken question
    speech_out/text          the text that was voiced
    speech_out/wav/<utt>.wav the spoken answer (codec rate, 24 kHz)
    speech_out/asr_text      the spoken answer transcribed back by the model's own CTC ASR
                             (speech_out: only the turns the state head does not ignore,
                             as a duplex dialogue would; --speak_ignored true voices all,
                             see below)
    turn/turn_info           `utt_id label seconds`: the state head's first decision while
                             listening (1 respond, 2 ignore, 0 never decided, seconds -1)

Multi-turn utterance ids `<dialog>-t<N>`: with --history_mode session (the default) each
dialog runs through one DuplexSession, turn after turn, as a live dialogue would: the
history of turn N is the LLM's K/V of the earlier audio turns and of its own answers, and
the state head takes the turns (one it leaves undecided is committed unless
--commit_undecided false); speech_in, speech_out and turn come from that session, text_in
from the text questions with the LLM's own text answers as history. With --history_mode own
(the older, flattering figure) the history of turn N is the dialog's earlier turns as text,
each the REFERENCE question and the LLM's own earlier answer; --history_mode none answers
every turn alone. The configs are the config.yaml beside each model file unless given.

--speak_ignored true (a diagnostic: it exercises speech output on every turn): with
history_mode own/none an ignored turn's speech-in answer is voiced. With history_mode session
an ignored turn has no answer in its dialog, so it is answered on a copy of the dialog: a
second session runs the dialog's earlier turns again (the same audio, so with clock=audio the
same K/V) and then this turn with the state head's turn-taking switched off up to the chunk
at which the head said ignore, where the turn is committed, i.e. answered and voiced as if
the head had said respond there. That answer goes to speech_out only; the dialog's own
session, and so speech_in, turn and every other turn's outputs, stay as if the turn had
been ignored (speech_in of the ignored turn stays empty).
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from espnet2.utils import config_argparse
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str2bool, str2triple_str, str_or_none

from espnet_freeze_omni.data.kaldi_table import read_keys
from espnet_freeze_omni.inference.decode_options import (
    OUTPUTS,
    add_model_arguments,
    add_synthesis_arguments,
    build_speech2speech,
    parse_decode_args,
    wav_scp_of,
)

DIALOG_TURN = re.compile(r"^(?P<dialog>.+)-t(?P<turn>\d+)$")
MIN_ASR_SECONDS = 0.1  # shorter spoken answers (e.g. empty ones) get an empty transcript


def get_parser() -> argparse.ArgumentParser:
    parser = config_argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log_level", default="INFO",
                        choices=("ERROR", "WARNING", "INFO", "DEBUG"))
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: decode on the GPU")
    add_model_arguments(parser)

    group = parser.add_argument_group("Data")
    group.add_argument("--data_path_and_name_and_type", type=str2triple_str, action="append",
                       required=True, help="<data dir>/wav.scp,speech,sound")
    group.add_argument("--key_file", type=str_or_none, default=None,
                       help="decode these utterance ids (first column); default: all")
    group.add_argument("--qa_refs", type=str_or_none, default=None,
                       help='JSON lines {"id", "question", "answers"}: the text questions')
    group.add_argument("--output_dir", required=True)

    group = parser.add_argument_group("Decoding")
    group.add_argument("--outputs", nargs="+", default=list(OUTPUTS), choices=OUTPUTS,
                       help="what to produce (ASR-only test sets: asr_ctc asr_llm)")
    group.add_argument("--history_mode", default="session", choices=("session", "own", "none"),
                       help="multi-turn history of the spoken turns: session (each dialog "
                            "through one DuplexSession: the K/V of the earlier audio turns and "
                            "the model's own answers, the state head taking the turns), own "
                            "(the question TEXTS of earlier turns with the model's own answers, "
                            "every turn answered), none")
    group.add_argument("--session_conf", action=NestedDictAction, default=dict(),
                       help="history_mode session: DuplexSession options (vad=true, "
                            "turn_detection=state_head, vad_min_silence_s=..., ...)")
    group.add_argument("--turn_silence", type=float, default=1.0,
                       help="history_mode session: seconds of silence fed after each turn")
    group.add_argument("--commit_undecided", type=str2bool, default=True,
                       help="history_mode session: answer a turn the state head left "
                            "undecided (its turn_info still says never decided)")
    group.add_argument("--speak_ignored", type=str2bool, default=False,
                       help="voice the answers to turns the state head ignores (side talk) "
                            "too; by default they get no speech_out line or wav. In "
                            "history_mode session such a turn is answered on a copy of its "
                            "dialog as if the head had said respond at the chunk where it "
                            "said ignore; speech_in and turn, and the other turns, are "
                            "unchanged (module docstring)")
    group.add_argument("--batch_size", type=int, default=8, help="text-in answers per batch")
    add_synthesis_arguments(group)
    return parser


# ---------------------------------------------------------------------------- data
def dialog_turn(utt: str) -> Tuple[str, Optional[int]]:
    """(dialog id, turn number) of a `<dialog>-t<N>` id; (utt, None) for a single turn."""
    match = DIALOG_TURN.match(utt)
    return (match["dialog"], int(match["turn"])) if match else (utt, None)


def earlier_turns(utt: str, all_utts: List[str]) -> List[str]:
    """The dialog's turns before `utt` among `all_utts`, in turn order."""
    dialog, turn = dialog_turn(utt)
    if turn is None:
        return []
    found = [(t, u) for u in all_utts for d, t in [dialog_turn(u)]
             if d == dialog and t is not None and t < turn]
    return [u for _, u in sorted(found)]


class Questions:
    """The text question of each utterance: --qa_refs by id, else the data dir's `text`."""

    def __init__(self, qa_refs: Optional[str], data_dir: Path):
        from espnet_freeze_omni.data.kaldi_table import read_kaldi_map
        from espnet_freeze_omni.scoring.qa_containment import load_references

        self.sources = []
        self.table: Dict[str, str] = {}
        text = data_dir / "text"
        if text.is_file():
            self.table.update(read_kaldi_map(text))
            self.sources.append(str(text))
        if qa_refs is not None:
            refs = {r["id"]: r.get("question") for r in load_references(qa_refs)}
            self.table.update({k: q for k, q in refs.items() if q})
            self.sources.insert(0, qa_refs)

    def __call__(self, utt: str) -> str:
        if utt not in self.table:
            where = " or ".join(self.sources) or "no --qa_refs and no text file"
            raise KeyError(f"utterance {utt}: no text question in {where}")
        return self.table[utt]


def kaldi_line(utt: str, text: str) -> str:
    """`utt_id words...` on one line (an answer's newlines become spaces)."""
    return f"{utt} {' '.join(text.split())}".rstrip() + "\n"


# ---------------------------------------------------------------------------- decoding
class TestSetDecoder:
    """Everything stage 15 writes for one data dir, utterance by utterance."""

    def __init__(self, s2s, wavs: Dict[str, str], questions: Questions, history_mode: str,
                 batch_size: int, speak_ignored: bool = False,
                 session_conf: Optional[Dict] = None, turn_silence: float = 1.0,
                 commit_undecided: bool = True):
        self.s2s = s2s
        self.session_conf = dict(session_conf or {})
        self.turn_silence = turn_silence
        self.commit_undecided = commit_undecided
        self.committed: List[str] = []  # turns the state head left undecided, committed
        self._dialog = None  # (dialog id, session, turns run, {utt: TurnResult})
        self.speak_ignored = speak_ignored
        self.silent: List[str] = []  # turns not voiced: the state head ignored them
        self.voiced_ignored: List[str] = []  # ignored turns voiced anyway (--speak_ignored)
        self.wavs = wavs
        self.all_utts = list(wavs)
        self.questions = questions
        self.history_mode = history_mode
        self.batch_size = batch_size
        self._speech_answers: Dict[str, str] = {}  # texts only: histories need no hidden states

    def load(self, utt: str) -> np.ndarray:
        from espnet_freeze_omni.data.audio import load_audio

        return load_audio(self.wavs[utt], self.s2s.input_sample_rate, utt)

    # -- text in: batched through generate_answers, each dialog with its own answers
    def text_answers(self, keys: List[str]) -> Dict[str, str]:
        from espnet_freeze_omni.llm.generation import answer_questions, generate_answers

        s2s = self.s2s
        max_new = s2s.listener.max_new_tokens
        if self.history_mode == "none":
            answers = answer_questions(s2s.llm, s2s.template, [self.questions(u) for u in keys],
                                       self.batch_size, max_new)
            return dict(zip(keys, answers))
        chains = {}  # last key of a dialog -> its turns up to that key
        for utt in keys:
            chain = earlier_turns(utt, self.all_utts) + [utt]
            dialog = dialog_turn(utt)[0]
            if dialog not in chains or len(chain) > len(chains[dialog]):
                chains[dialog] = chain
        dialogs = []
        for chain in chains.values():
            turns = []
            for u in chain:  # the assistant placeholders are replaced by the LLM's answers
                turns += [{"role": "user", "content": self.questions(u)},
                          {"role": "assistant", "content": ""}]
            dialogs.append({"turns": turns, "utts": chain})
        answered = generate_answers(s2s.llm, s2s.template, dialogs, self.batch_size, max_new,
                                    progress=True)
        out = {}
        for dialog in answered:
            for u, turn in zip(dialog["utts"], dialog["turns"][1::2]):
                out[u] = turn["content"]
        return {u: out[u] for u in keys}

    # -- speech in: histories hold the LLM's own earlier spoken-question answers
    def speech_history(self, utt: str):
        """History of a spoken turn; earlier turns not answered yet are answered first."""
        if self.history_mode == "none":
            return None
        history = []
        for earlier in earlier_turns(utt, self.all_utts):
            if earlier not in self._speech_answers:
                self.speech_answer(earlier, self.load(earlier), self.speech_history(earlier))
            history += [{"role": "user", "content": self.questions(earlier)},
                        {"role": "assistant", "content": self._speech_answers[earlier]}]
        return history or None

    # -- session: each dialog through one DuplexSession, the state head taking the turns
    def session_turn(self, utt: str):
        """The TurnResult of `utt` in its dialog's session; the dialog's earlier turns (in
        wav.scp) are run first. One dialog's session is kept at a time."""
        from espnet_freeze_omni.inference.duplex_runner import run_turn

        dialog = dialog_turn(utt)[0]
        chain = earlier_turns(utt, self.all_utts) + [utt]
        if self._dialog is None or self._dialog[0] != dialog \
                or self._dialog[2] != chain[:len(self._dialog[2])]:
            self._dialog = (dialog, self.s2s.session(**self.session_conf), [], {})
        _, session, done, results = self._dialog
        for u in chain[len(done):]:
            session.reseed(u)  # the same audio whatever else the job decoded
            results[u] = run_turn(session, self.load(u), silence_seconds=self.turn_silence,
                                  commit_undecided=self.commit_undecided)
            done.append(u)
            if results[u].committed:
                self.committed.append(u)
        return results[utt]

    def answer_ignored_turn(self, utt: str, result) -> Optional[Tuple[str, np.ndarray]]:
        """--speak_ignored in session mode: (answer text, pcm) of a turn the state head
        ignored, answered as if the head had said respond at the chunk where it said ignore.

        The dialog's own session must stay as if the turn were ignored, so a second session
        runs the dialog's earlier turns again (reseeded per turn as in `session_turn`: with
        clock=audio the same K/V), then this turn with turn detection "manual" (the head is
        read but not obeyed) up to the end of the tick at which the dialog's session heard
        the head say ignore, and commits it there. None if that turn has no ignore event
        (or the copy heard no audio to answer)."""
        from espnet_freeze_omni.inference.duplex_runner import run_turn

        ignored = [e for e in result.events if e.type == "ignored"]
        if not ignored:
            return None
        chain = earlier_turns(utt, self.all_utts) + [utt]
        copy = self.s2s.session(**self.session_conf)
        for u in chain[:-1]:
            copy.reseed(u)
            run_turn(copy, self.load(u), silence_seconds=self.turn_silence,
                     commit_undecided=self.commit_undecided)
        copy.reseed(utt)
        rate = copy.sample_rate
        audio = np.concatenate([self.load(utt).astype(np.float32, copy=False),
                                np.zeros(int(round(self.turn_silence * rate)), np.float32)])
        # the state head is read but not obeyed from here on (this session is thrown away
        # after the turn); fed in 20 ms pieces until it has consumed as much input as the
        # dialog's session had when its head said ignore (the tick is 160 ms, so at most
        # the last piece's < 20 ms stay pending: commit() hears them as the turn's end)
        copy.options.turn_detection = "manual"
        events = []
        step = max(1, int(round(0.02 * rate)))
        for i in range(0, len(audio), step):
            if copy.audio_time >= ignored[0].audio_time - 0.5 / rate:
                break
            events += copy.feed(audio[i:i + step])
        try:
            events += copy.commit()
        except ValueError as e:  # nothing heard since the last turn: nothing to answer
            logging.warning("utterance %s: --speak_ignored: the turn cannot be committed (%s)",
                            utt, e)
            return None
        events += copy.flush()
        done = [e for e in events if e.type == "answer_done"]
        if not done:
            return None
        answer_id = done[-1].data["answer_id"]
        pcm = [e.pcm for e in events if e.type == "audio" and e.data["answer_id"] == answer_id]
        return done[-1].data.get("text", ""), \
            np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.float32)

    def decode_in_session(self, utt: str, outputs: List[str], files: Dict[str, object],
                          wav_dir: Path) -> None:
        import soundfile

        from espnet_freeze_omni.data.audio import resample

        s2s = self.s2s
        result = self.session_turn(utt)
        if "speech_in" in outputs:
            files["speech_in"].write(kaldi_line(utt, result.answer_text))
        voiced_text, pcm = result.answer_text, result.pcm
        if "speech_out" in outputs and not len(pcm) and self.speak_ignored:
            answered = self.answer_ignored_turn(utt, result)
            if answered is not None and len(answered[1]):
                voiced_text, pcm = answered
                self.voiced_ignored.append(utt)
        if "speech_out" in outputs and len(pcm):
            soundfile.write(wav_dir / f"{utt}.wav", np.clip(pcm, -1.0, 1.0),
                            s2s.sample_rate, subtype="PCM_16")
            files["speech_out"].write(kaldi_line(utt, voiced_text))
            heard = ""
            if len(pcm) >= MIN_ASR_SECONDS * s2s.sample_rate:
                heard = s2s.ctc_transcribe(resample(pcm, s2s.sample_rate,
                                                    s2s.input_sample_rate))
            files["speech_out_asr"].write(kaldi_line(utt, heard))
        elif "speech_out" in outputs:
            self.silent.append(utt)
        if "turn" in outputs:
            when = result.decision_time if result.decision_time is not None else -1.0
            files["turn"].write(f"{utt} {result.decision} {when:.3f}\n")

    def speech_answer(self, utt: str, wav: np.ndarray, history):
        answer = self.s2s.answer(wav, history)
        self._speech_answers[utt] = answer.text
        return answer

    def decode_utterance(self, utt: str, outputs: List[str], files: Dict[str, object],
                         wav_dir: Path) -> None:
        import soundfile

        from espnet_freeze_omni.data.audio import resample
        from espnet_freeze_omni.models.speech_input import STATE_IGNORE

        s2s = self.s2s
        if self.history_mode == "session":
            asr = [o for o in outputs if o in ("asr_ctc", "asr_llm")]
            if asr:
                wav = self.load(utt)
                if "asr_ctc" in asr:
                    files["asr_ctc"].write(kaldi_line(utt, s2s.ctc_transcribe(wav)))
                if "asr_llm" in asr:
                    files["asr_llm"].write(kaldi_line(utt, s2s.llm_transcribe(wav)))
            if {"speech_in", "speech_out", "turn"} & set(outputs):
                self.decode_in_session(utt, outputs, files, wav_dir)
            return
        wav = self.load(utt)
        needs_history = {"speech_in", "speech_out", "turn"} & set(outputs)
        history = self.speech_history(utt) if needs_history else None
        if "asr_ctc" in outputs:
            files["asr_ctc"].write(kaldi_line(utt, s2s.ctc_transcribe(wav)))
        if "asr_llm" in outputs:
            files["asr_llm"].write(kaldi_line(utt, s2s.llm_transcribe(wav)))
        listened = None
        if "turn" in outputs or ("speech_out" in outputs and not self.speak_ignored):
            listened = s2s.listen(wav, history)
        speak = "speech_out" in outputs
        if speak and not self.speak_ignored and listened.decision == STATE_IGNORE:
            speak = False  # side talk: a duplex model stays silent
            self.silent.append(utt)
        if "speech_in" in outputs or speak:
            answer = self.speech_answer(utt, wav, history)
            if "speech_in" in outputs:
                files["speech_in"].write(kaldi_line(utt, answer.text))
            if speak:
                s2s.reseed(utt)
                pcm = s2s.speak(answer.token_ids, answer.hidden_states)
                soundfile.write(wav_dir / f"{utt}.wav", np.clip(pcm, -1.0, 1.0),
                                s2s.sample_rate, subtype="PCM_16")
                files["speech_out"].write(kaldi_line(utt, answer.text))
                heard = ""
                if len(pcm) >= MIN_ASR_SECONDS * s2s.sample_rate:
                    pcm16k = resample(pcm, s2s.sample_rate, s2s.input_sample_rate)
                    heard = s2s.ctc_transcribe(pcm16k)
                files["speech_out_asr"].write(kaldi_line(utt, heard))
        if "turn" in outputs:
            when = listened.decision_time if listened.decision_time is not None else -1.0
            files["turn"].write(f"{utt} {listened.decision} {when:.3f}\n")


def decode(args: argparse.Namespace) -> Path:
    """Decode --key_file's utterances of the data dir; returns --output_dir."""
    from tqdm import tqdm

    from espnet_freeze_omni.data.kaldi_table import read_wav_scp

    wav_scp = wav_scp_of(args)
    wavs = read_wav_scp(wav_scp)
    keys = read_keys(args.key_file, wavs, wav_scp) if args.key_file else list(wavs)
    unknown = sorted(set(args.outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"unknown outputs {unknown}: choose from {list(OUTPUTS)}")
    outputs = [o for o in OUTPUTS if o in args.outputs]
    questions = Questions(args.qa_refs, Path(wav_scp).parent)

    s2s = build_speech2speech(args)
    decoder = TestSetDecoder(s2s, wavs, questions, args.history_mode, args.batch_size,
                             speak_ignored=args.speak_ignored, session_conf=args.session_conf,
                             turn_silence=args.turn_silence,
                             commit_undecided=args.commit_undecided)

    out_dir = Path(args.output_dir)
    paths = {o: out_dir / o / "text" for o in outputs if o != "turn"}
    if "speech_out" in outputs:
        paths["speech_out_asr"] = out_dir / "speech_out" / "asr_text"
    if "turn" in outputs:
        paths["turn"] = out_dir / "turn" / "turn_info"
    wav_dir = out_dir / "speech_out" / "wav"
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    if "speech_out" in outputs:
        wav_dir.mkdir(parents=True, exist_ok=True)

    if "text_in" in outputs:
        logging.info("text in: %d questions (history: %s)", len(keys), args.history_mode)
        text_answers = decoder.text_answers(keys)
        with open(paths.pop("text_in"), "w", encoding="utf-8") as f:
            f.writelines(kaldi_line(u, text_answers[u]) for u in keys)

    # Dialogs in turn order: every history is answered just before it is needed.
    order = sorted(keys, key=lambda u: (dialog_turn(u)[0], dialog_turn(u)[1] or 0))
    files = {name: open(path, "w", encoding="utf-8") for name, path in paths.items()}
    try:
        for utt in tqdm(order, desc="speech2speech", unit="utt"):
            try:
                decoder.decode_utterance(utt, outputs, files, wav_dir)
            except Exception as e:
                raise RuntimeError(f"utterance {utt} ({wavs[utt]}): {e}") from e
            for f in files.values():
                f.flush()
    finally:
        for f in files.values():
            f.close()
    if decoder.committed:
        logging.info("session: %d turn(s) left undecided by the state head were committed: %s",
                     len(decoder.committed), " ".join(decoder.committed))
    if decoder.voiced_ignored:
        logging.info("speech_out: %d turn(s) ignored by the state head, voiced anyway "
                     "(--speak_ignored): %s", len(decoder.voiced_ignored),
                     " ".join(decoder.voiced_ignored))
    if decoder.silent:
        logging.info("speech_out: %d turn(s) ignored by the state head, not voiced: %s",
                     len(decoder.silent), " ".join(decoder.silent))
    logging.info("wrote %s under %s", ", ".join(outputs), out_dir)
    return out_dir


def main(cmd=None):
    decode(parse_decode_args(get_parser, cmd))


if __name__ == "__main__":
    main()
