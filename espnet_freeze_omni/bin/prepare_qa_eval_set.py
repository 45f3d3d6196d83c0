#!/usr/bin/env python3
"""Prepare a spoken QA set as a Kaldi data dir + reference answers (stage 16 scores them).

    python -m espnet_freeze_omni.bin.prepare_qa_eval_set --format llama_questions \
        --input /corpora/llama_questions/llama_questions.tsv \
        --data_dir data/llama_questions --refs data/local/qa_eval/llama_questions_refs.jsonl
    python -m espnet_freeze_omni.bin.prepare_qa_eval_set --format web_questions \
        --input webquestions_test.json --data_dir data/web_questions \
        --refs data/local/qa_eval/web_questions_refs.jsonl --tts_cmd 'my_tts {text} {wav}'
    python -m espnet_freeze_omni.bin.prepare_qa_eval_set --format triviaqa \
        --input triviaqa_test.jsonl --data_dir data/triviaqa --refs ... --max_items 1000
    python -m espnet_freeze_omni.bin.prepare_qa_eval_set --format dialogs \
        --input qa_train.jsonl --data_dir data/qa_train --vary_voices true   # training turns

Formats (see espnet_freeze_omni/data/qa_eval_sets.py):
    llama_questions  TSV with Questions, Answer, Wav Filename (wavs beside the TSV)
    web_questions    JSON list of {"qText", "answers"}
    triviaqa         JSON lines {"question", "answer": {"aliases", "value"}} or {"question", "answers"}
    dialogs          {"id", "turns"} JSON lines: every user turn, as <id>-t<k> (no refs)

Questions without a recording are spoken by --tts_cmd (a shell command with {text} and {wav};
any sample rate, sox converts) or else by espeak-ng. Utterance ids are <id_prefix>-00001, ...
in file order. Outputs: <data_dir>/{wav.scp,text,utt2spk,spk2utt,turn_info} and --refs
({"id", "question", "answers"} JSON lines).
"""
import argparse
import logging
import sys

from espnet2.utils.types import str2bool, str_or_none

from espnet_freeze_omni.data.qa_eval_sets import READERS, QASetError, prepare_question_set


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(READERS))
    parser.add_argument("--input", required=True,
                        help="the set's file (llama_questions: the TSV or its folder)")
    parser.add_argument("--data_dir", required=True, help="Kaldi data dir to write")
    parser.add_argument("--refs", type=str_or_none, default=None,
                        help='reference answers to write, JSON lines {"id", "question", "answers"}')
    parser.add_argument("--wav_dir", type=str_or_none, default=None,
                        help="where the 16-bit wavs go (default: <data_dir>/wav)")
    parser.add_argument("--id_prefix", type=str_or_none, default=None,
                        help="utterance id prefix (default: the format name; dialogs: none)")
    parser.add_argument("--tts_cmd", type=str_or_none, default=None,
                        help="shell command speaking {text} into {wav}; default: espeak-ng")
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--trailing_silence", type=float, default=1.0,
                        help="seconds of silence after each question (the turn end must be heard)")
    parser.add_argument("--vary_voices", type=str2bool, default=False,
                        help="espeak-ng: cycle voices/speeds/pitches (training sets)")
    parser.add_argument("--max_items", type=int, default=0,
                        help="keep the first N questions (0: all)")
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis jobs")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    if args.refs is None and args.format != "dialogs":
        raise SystemExit("prepare_qa_eval_set: --refs is required for a test set "
                         "(stage 16 scores against it)")
    prefix = args.id_prefix if args.id_prefix is not None else (
        "" if args.format == "dialogs" else args.format)
    try:
        items = READERS[args.format](args.input, prefix=prefix)
        if args.max_items > 0:
            items = items[:args.max_items]
        counts = prepare_question_set(
            items, args.data_dir, wav_dir=args.wav_dir, refs=args.refs, tts_cmd=args.tts_cmd,
            sample_rate=args.sample_rate, trailing_silence=args.trailing_silence,
            vary_voices=args.vary_voices, num_workers=args.nj, progress=len(items) > 100)
    except (QASetError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"prepare_qa_eval_set: {e}") from e
    tts = args.tts_cmd or "espeak-ng"
    print(f"{args.data_dir}: {counts['questions']} questions of {args.input} "
          f"({counts['recorded']} with their own recording, {counts['synthesized']} spoken by "
          f"{tts}, {counts['reused']} wavs already there)"
          + (f"; references in {args.refs}" if args.refs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
