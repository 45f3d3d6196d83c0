#!/usr/bin/env python3
"""The speech-out ceiling: how much of qa_acc_speech_out the listener alone loses.

qa_acc_speech_out hears the speech decoder's answers through the recipe's own ASR (the
listener). That ASR misspells names it never learned to spell, so even perfect speech would
not score the text-in accuracy. This bin renders the texts the decoder voiced
(speech_out/text) with espeak-ng in the assistant's training voice and has the same listener
transcribe them: scored like qa_acc_speech_out (recipe stage 16) that is
qa_acc_speech_out_ceiling, and qa_acc_speech_out_ceiling - qa_acc_speech_out is the share of
the loss that is the decoder's.

    # what recipe stage 15 runs (--speech_out_ceiling): the listener of speech_out/asr_text
    python -m espnet_freeze_omni.bin.speech_out_ceiling \
        --text exp/decode/qa_test/speech_out/text --listener ctc \
        --train_config exp/speech_input_stage3/config.yaml \
        --model_file exp/speech_input_stage3/valid.loss.best.pth --llm_path exp/llm \
        --output_dir exp/decode/qa_test/speech_out_ceiling
    # another listener, heard on both the renders and the decoder's own wavs
    python -m espnet_freeze_omni.bin.speech_out_ceiling \
        --text exp/decode/qa_test/speech_out/text --listener llm \
        --train_config exp/speech_input_stage2/config.yaml \
        --model_file exp/speech_input_stage2/valid.loss.best.pth --llm_path exp/llm \
        --output_dir out/ceiling_llm --decoder_wav_dir exp/decode/qa_test/speech_out/wav \
        --decoder_asr_text out/ceiling_llm/decoder_asr_text

The listener is a speech-input model: --listener ctc is its CTC head (what stage 15 hears the
spoken answers with, from the stage-3 model), --listener llm its transcription through the
frozen LLM (give a stage-2 model: a stage-3 adapter trained further answers instead of
repeating). With --decoder_wav_dir the decoder's own wavs (<dir>/<utt>.wav, any rate) are
transcribed by the same listener into --decoder_asr_text, so that a listener other than
stage 15's can be compared on both. On the embedded recipe CTC is the better listener: the
LLM writes a fact it knows about the person named rather than the one it hears
(docs/results.md).

Writes under --output_dir: wav.scp, text, utt2spk, spk2utt and wav/<utt>.wav (the renders at
the listener's sample rate, a Kaldi-style data dir) and asr_text (`utt_id transcript`, one
line per line of --text; an empty text or a render under MIN_ASR_SECONDS gets an empty
transcript, as a spoken answer that short does in stage 15). The renders' `text` is what
espeak-ng was given: --text without its non-printing characters.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, Optional

from espnet_freeze_omni.data.synthetic_world import ASSISTANT_VOICE, TTS_TRAILING_SILENCE

LISTENERS = ("ctc", "llm")
SPEAKER = "assistant"  # the renders' utt2spk: one voice


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log_level", default="INFO",
                        choices=("ERROR", "WARNING", "INFO", "DEBUG"))
    group = parser.add_argument_group("Texts and voice")
    group.add_argument("--text", required=True,
                       help="the voiced texts, `utt_id text` (stage 15's speech_out/text)")
    group.add_argument("--voice", default=ASSISTANT_VOICE["voice"],
                       help="espeak-ng voice (default: the embedded recipe's assistant voice)")
    group.add_argument("--speed", type=int, default=ASSISTANT_VOICE["speed"],
                       help="espeak-ng words per minute")
    group.add_argument("--pitch", type=int, default=ASSISTANT_VOICE["pitch"],
                       help="espeak-ng pitch, 0-99")
    group.add_argument("--trailing_silence", type=float, default=TTS_TRAILING_SILENCE,
                       help="seconds of silence after each render (the TTS sets have it)")
    group.add_argument("--nj", type=int, default=2, help="espeak-ng processes at a time")
    group = parser.add_argument_group("Listener")
    group.add_argument("--listener", default="ctc", choices=LISTENERS,
                       help="ctc: the model's CTC head; llm: transcription through the frozen "
                            "LLM (give a stage-2 model)")
    group.add_argument("--train_config", required=True, help="speech-input config.yaml")
    group.add_argument("--model_file", required=True, help="speech-input checkpoint")
    group.add_argument("--llm_path", default=None, help="the frozen LLM (default: the config's)")
    group.add_argument("--max_new_tokens", type=int, default=128,
                       help="--listener llm: tokens per transcript")
    group.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: listen on the GPU")
    group = parser.add_argument_group("Output")
    group.add_argument("--output_dir", required=True)
    group.add_argument("--decoder_wav_dir", default=None,
                       help="also transcribe the decoder's <utt>.wav here with the same "
                            "listener (every utterance of --text that has a wav)")
    group.add_argument("--decoder_asr_text", default=None,
                       help="where the decoder's transcripts go (with --decoder_wav_dir)")
    return parser


def transcribe_all(listener, mode: str, wavs: Dict[str, str], desc: str) -> Dict[str, str]:
    """{utt: transcript} of {utt: wav path}, each wav resampled to the listener's rate; a wav
    under MIN_ASR_SECONDS is heard as nothing (stage 15's rule for the spoken answers)."""
    from tqdm import tqdm

    from espnet_freeze_omni.bin.speech2speech_inference import MIN_ASR_SECONDS
    from espnet_freeze_omni.data.audio import load_audio

    heard = {}
    for utt in tqdm(sorted(wavs), desc=desc, unit="utt"):
        # mono at the listener's rate; its errors name the utterance and the file
        wav = load_audio(wavs[utt], listener.sample_rate, utt)
        if len(wav) < MIN_ASR_SECONDS * listener.sample_rate:
            heard[utt] = ""
            continue
        try:
            text = listener.ctc_transcribe(wav) if mode == "ctc" else listener.llm_transcribe(wav)
        except Exception as e:
            raise RuntimeError(f"utterance {utt} ({wavs[utt]}): the {mode} listener failed: "
                               f"{e}") from e
        heard[utt] = " ".join(text.split())
    return heard


def speakable_texts(texts: Dict[str, str]) -> Dict[str, str]:
    """{utt: text} of the texts with something to say, cleaned as espeak-ng is given them."""
    from espnet_freeze_omni.data.espeak import speakable

    cleaned = {utt: speakable(text) for utt, text in texts.items()}
    return {utt: text for utt, text in cleaned.items() if text}


def render(texts: Dict[str, str], out_dir: Path, args: argparse.Namespace,
           sample_rate: int) -> Dict[str, str]:
    """espeak-ng renders of the texts with something to say, as a data dir under out_dir;
    {utt: wav} of those with audio."""
    import soundfile

    from espnet_freeze_omni.data.espeak import SpokenUtterance, synthesize_datadir
    from espnet_freeze_omni.data.kaldi_table import read_kaldi_map

    # texts with nothing espeak-ng can say (control characters only) get no render
    spoken = [SpokenUtterance(utt_id=utt, text=text, speaker=SPEAKER,
                              voice=args.voice, speed=args.speed, pitch=args.pitch,
                              trailing_silence=args.trailing_silence)
              for utt, text in sorted(speakable_texts(texts).items())]
    if not spoken:  # nothing voiced: an empty data dir, so later steps find the files
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("wav.scp", "text", "utt2spk", "spk2utt"):
            (out_dir / name).write_text("")
        return {}
    synthesize_datadir(spoken, out_dir, out_dir / "wav", sample_rate=sample_rate,
                       num_workers=args.nj, progress=True)
    # a render without a sample (espeak-ng said nothing) is heard as nothing
    return {utt: path for utt, path in read_kaldi_map(out_dir / "wav.scp").items()
            if soundfile.info(path).frames > 0}


def write_transcripts(path: Path, utts, heard: Dict[str, str]) -> None:
    """One `utt_id transcript` line per utterance of `utts`, in their order (empty ones as
    the id alone, as stage 15 writes them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for utt in utts:
            f.write(f"{utt} {heard.get(utt, '')}".rstrip() + "\n")


def decoder_wavs(wav_dir: Path, utts) -> Dict[str, str]:
    """{utt: <wav_dir>/<utt>.wav} for the utterances of --text; each must have its wav."""
    missing = [u for u in utts if not (wav_dir / f"{u}.wav").is_file()]
    if missing:
        raise FileNotFoundError(f"{wav_dir}: no wav for {len(missing)} voiced utterance(s), "
                                f"e.g. {missing[0]}.wav")
    return {u: str(wav_dir / f"{u}.wav") for u in utts}


def main(cmd: Optional[list] = None) -> int:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    if (args.decoder_wav_dir is None) != (args.decoder_asr_text is None):
        raise SystemExit("speech_out_ceiling: give --decoder_wav_dir and --decoder_asr_text "
                         "together")
    from espnet_freeze_omni.data.kaldi_table import read_kaldi_map
    from espnet_freeze_omni.inference.speech_input_inference import SpeechInputInference

    texts = read_kaldi_map(args.text)
    utts = list(texts)
    out_dir = Path(args.output_dir)
    # the decoder's wavs are checked before anything is loaded or rendered
    decoded = (decoder_wavs(Path(args.decoder_wav_dir), utts)
               if args.decoder_wav_dir is not None else None)
    listener = SpeechInputInference.from_files(
        args.train_config, args.model_file, device="cuda" if args.ngpu > 0 else "cpu",
        llm_path=args.llm_path, max_new_tokens=args.max_new_tokens)
    if args.listener == "llm" and listener.template is None:
        raise SystemExit(f"speech_out_ceiling: --listener llm needs a model with an LLM; "
                         f"{args.model_file} has none (a stage-1 model)")
    voice = f"espeak-ng -v {args.voice} -s {args.speed} -p {args.pitch}"
    logging.info("%d voiced text(s) of %s rendered by %s into %s, heard by the %s listener "
                 "of %s", len(speakable_texts(texts)), args.text, voice,
                 out_dir, args.listener, args.model_file)
    wavs = render(texts, out_dir, args, listener.sample_rate)
    heard = transcribe_all(listener, args.listener, wavs, f"{args.listener} <- espeak-ng")
    write_transcripts(out_dir / "asr_text", utts, heard)
    logging.info("wrote %s", out_dir / "asr_text")
    if decoded is not None:
        heard = transcribe_all(listener, args.listener, decoded,
                               f"{args.listener} <- speech decoder")
        write_transcripts(Path(args.decoder_asr_text), utts, heard)
        logging.info("wrote %s", args.decoder_asr_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
