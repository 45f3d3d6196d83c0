"""Generate the embedded corpus: a world of facts, Q&A dialogs, side talk, spoken by espeak-ng.

    python -m espnet_freeze_omni.bin.make_synthetic_corpus --out data --seed 0 \
        [--num_train 2000] [--num_dev 100] [--num_test 100] [--num_qa_train 3000] \
        [--num_qa_test 200] [--num_spoken_qa_train 600] [--num_side_talk_train 200] \
        [--num_side_talk_test 50] [--max_turns 3] [--num_countries 24] [--num_people 120] \
        [--num_tts_train 1500] [--num_tts_dev 100] [--num_repeat_train 1500] \
        [--sets "train dev test qa_train qa_test tts_train tts_dev"] [--wav_dir DIR] [--nj 2] \
        [--sample_rate 16000] [--text_only false] [--unseen_test true] [--voice_pool classic]

Writes <out>/local/world/ (world.json, facts.txt, qa_{train,test}.jsonl, qa_test_refs.jsonl,
repeat_train.jsonl, side talk, utterance lists) and the Kaldi data dirs
<out>/{train,dev,test,qa_train,qa_test,tts_train,tts_dev} (wav.scp, text, utt2spk, spk2utt,
turn_info); tts_train/tts_dev are assistant answers in one assistant voice, for the codec and
the speech decoder. Deterministic given the seed and sizes. With --unseen_test true (the
default) also <out>/qa_test_unseen: the qa_test questions and side talk (same ids, same
references: local/world/qa_test_unseen_refs.jsonl) in held-out voices, speeds, pitches and
noise (espeak.UNSEEN_TEST_CONDITIONS, listed per utterance in
local/world/utterances_qa_test_unseen.tsv); the other sets are the same with or without it.
"""
import argparse
import dataclasses
import sys
import time

from espnet2.utils.types import str2bool, str_or_none

from espnet_freeze_omni.data.espeak import VOICE_POOLS
from espnet_freeze_omni.data.synthetic_world import (SPOKEN_SETS, UNSEEN_TEST_SET,
                                                     CorpusSizes, make_corpus)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="data root, e.g. data")
    parser.add_argument("--seed", type=int, default=0)
    for field in dataclasses.fields(CorpusSizes):
        parser.add_argument(f"--{field.name}", type=int, default=field.default)
    parser.add_argument("--sets", type=str_or_none, default=None,
                        help=f"space-separated subset of {' '.join(SPOKEN_SETS)} "
                             f"{UNSEEN_TEST_SET} to synthesize (default: all)")
    parser.add_argument("--wav_dir", type=str_or_none, default=None,
                        help="where the wavs go (default: <out>/local/wav)")
    parser.add_argument("--nj", type=int, default=2, help="parallel espeak-ng/sox processes")
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--text_only", type=str2bool, default=False,
                        help="write the text artifacts only, no audio")
    parser.add_argument("--voice_pool", choices=VOICE_POOLS, default="classic",
                        help="voices of the ASR and QA sets (espeak.pick_voice): classic, six "
                             "voices on a 4x3 speed/pitch grid; diverse, three accents with "
                             "every espeak-ng variant not held out, any speed 130-210 and "
                             "pitch 30-70 (the texts are the same with either)")
    parser.add_argument("--unseen_test", type=str2bool, default=True,
                        help=f"make {UNSEEN_TEST_SET}: qa_test in held-out voices and noise")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    sizes = CorpusSizes(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CorpusSizes)})
    start = time.time()
    corpus = make_corpus(args.out, args.seed, sizes, args.text_only, args.wav_dir, args.nj,
                         args.sample_rate, args.sets.split() if args.sets else None,
                         args.unseen_test, args.voice_pool)
    spoken = ", ".join(f"{k} {len(v)}" for k, v in corpus.spoken.items())
    if args.unseen_test:
        spoken += f", {UNSEEN_TEST_SET} {len(corpus.unseen_test)}"
    print(f"make_synthetic_corpus: seed {args.seed}, {len(corpus.world.facts)} facts, "
          f"{len(corpus.qa_train)} train / {len(corpus.qa_test)} test dialogs, "
          f"{len(corpus.qa_test_refs)} test questions, {len(corpus.repeat_train)} repeat "
          f"dialogs; utterances: {spoken}"
          f"{' (text only)' if args.text_only else ''}; {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
