"""Options shared by the decoding bins (speech2speech_inference: the test sets,
duplex_inference: the duplex sets): the model files, what the answer is synthesized with,
the data dir and its key file, and building the Speech2Speech they decode with.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional

from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str_or_none

# what the test-set decoder can write (speech2speech_inference --outputs)
OUTPUTS = ("asr_ctc", "asr_llm", "text_in", "speech_in", "speech_out", "turn")


def parse_decode_args(get_parser: Callable[[], argparse.ArgumentParser],
                      cmd: Optional[List[str]] = None) -> argparse.Namespace:
    """A decoding bin's arguments, parsed and checked, with logging set up as espnet's bins
    do (the command line is logged first)."""
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    logging.info("%s %s", sys.executable, " ".join(sys.argv if cmd is None else cmd))
    if (args.codec_dir is None) == (args.codec_conf is None):
        raise SystemExit("give one of --codec_dir and --codec_conf")
    return args


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model files (shared with duplex_inference)."""
    group = parser.add_argument_group("Model")
    group.add_argument("--llm_conf", action=NestedDictAction, default=dict(),
                       help="The frozen LLM: path=<local Hugging Face dir> dtype=...; "
                            "default: what the speech-input config recorded")
    group.add_argument("--speech_input_model", required=True,
                       help="stage-3 speech-input checkpoint")
    group.add_argument("--speech_input_config", type=str_or_none, default=None,
                       help="default: config.yaml beside --speech_input_model")
    group.add_argument("--speech_output_model", required=True,
                       help="stage-3 speech-output checkpoint")
    group.add_argument("--speech_output_config", type=str_or_none, default=None,
                       help="default: config.yaml beside --speech_output_model")
    group.add_argument("--codec_dir", type=str_or_none, default=None,
                       help="embedded codec dir or espnet gan_codec exp dir")
    group.add_argument("--codec_model", type=str_or_none, default=None,
                       help="checkpoint inside a gan_codec --codec_dir (default: its best)")
    group.add_argument("--codec_conf", type=str_or_none, default=None,
                       help="instead of --codec_dir: a YAML load_codec() config")


def add_synthesis_arguments(group) -> None:
    """LLM answer length, speech decoder, codec and text segments (shared with
    duplex_inference)."""
    group.add_argument("--max_new_tokens", type=int, default=128, help="LLM tokens per answer")
    group.add_argument("--top_k", type=int, default=2, help="codec-token sampling")
    group.add_argument("--guidance_scale", type=float, default=1.0,
                       help="classifier-free guidance of the speech decoder against its "
                            "text-free context (1 = off; needs a decoder trained with "
                            "speech_decoder_conf condition_dropout > 0)")
    group.add_argument("--max_codec_tokens", type=int, default=1000, help="per text segment")
    group.add_argument("--seed", type=int, default=0, help="codec-token sampling seed")
    group.add_argument("--packet_conf", action=NestedDictAction, default=dict(),
                       help="PacketDecoder: first_packet, lookahead, packet, overlap")
    group.add_argument("--min_segment_tokens", type=int, default=4)
    group.add_argument("--long_segment_tokens", type=int, default=20)


def wav_scp_of(args: argparse.Namespace) -> str:
    """The one <dir>/wav.scp of --data_path_and_name_and_type (checked)."""
    speech = [t for t in args.data_path_and_name_and_type if t[1] == "speech"]
    others = [t for t in args.data_path_and_name_and_type if t[1] != "speech"]
    if len(speech) != 1 or speech[0][2] != "sound" or others:
        raise ValueError("--data_path_and_name_and_type takes one <dir>/wav.scp,speech,sound "
                         f"entry, got {args.data_path_and_name_and_type}")
    wav_scp = speech[0][0]
    if not Path(wav_scp).is_file():
        raise FileNotFoundError(f"wav.scp not found: {wav_scp}")
    return wav_scp


def build_speech2speech(args: argparse.Namespace):
    """Speech2Speech.from_files from the Model and synthesis arguments."""
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech

    device = "cuda" if args.ngpu > 0 else "cpu"
    return Speech2Speech.from_files(
        args.speech_input_config, args.speech_input_model,
        args.speech_output_config, args.speech_output_model,
        codec_conf=args.codec_conf,
        codec_dir=None if args.codec_conf else args.codec_dir,
        device=device, llm_conf=args.llm_conf,
        decode_conf=dict(max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                         guidance_scale=args.guidance_scale,
                         max_codec_tokens=args.max_codec_tokens, seed=args.seed,
                         packet_conf=args.packet_conf,
                         min_segment_tokens=args.min_segment_tokens,
                         long_segment_tokens=args.long_segment_tokens))
