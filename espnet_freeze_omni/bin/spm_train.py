"""Train a sentencepiece model on the transcripts of a Kaldi `text` table, and write the CTC
token list of its pieces (the driver's stage 6 with --token_type bpe).

    python -m espnet_freeze_omni.bin.spm_train --text dump/raw16k/train/text \
        --model_prefix exp/token_list/bpe_unigram30/bpe --vocab_size 30 \
        [--model_type unigram] [--token_list exp/token_list/bpe_unigram30/tokens.txt]

Writes <model_prefix>.model and .vocab. The token list is espnet's layout: `<blank>`,
`<unk>`, every piece of the model but its own <unk>/<s>/</s>, then `<sos/eos>`; so its size
is the model's vocabulary + 1. --vocab_size is an upper bound: a corpus too small for it gets
the pieces it has (sentencepiece's hard_vocab_limit is off) and the log says how many.
"""
import argparse
import sys
import tempfile
from pathlib import Path

BLANK, UNK, SOS_EOS = "<blank>", "<unk>", "<sos/eos>"


def transcripts(text_file: str):
    """The transcript of every line of a Kaldi text table (the utterance id dropped)."""
    with open(text_file, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(maxsplit=1)
            if len(parts) == 2 and parts[1].strip():
                yield parts[1].strip()


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, help="Kaldi text table (`utt_id words ...`)")
    parser.add_argument("--model_prefix", required=True, help="writes <prefix>.model/.vocab")
    parser.add_argument("--vocab_size", type=int, required=True,
                        help="pieces of the model at most (nbpe)")
    parser.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    parser.add_argument("--character_coverage", type=float, default=1.0)
    parser.add_argument("--token_list", default=None,
                        help="also write the CTC token list here")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    import sentencepiece as spm

    lines = list(transcripts(args.text))
    if not lines:
        print(f"spm_train: no transcript in {args.text}", file=sys.stderr)
        return 1
    prefix = Path(args.model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    chars = len({c for line in lines for c in line if not c.isspace()}) + 1  # + the word mark
    with tempfile.TemporaryDirectory() as tmp:
        sentences = Path(tmp) / "sentences.txt"
        sentences.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            spm.SentencePieceTrainer.train(
                input=str(sentences), model_prefix=str(prefix), vocab_size=args.vocab_size,
                model_type=args.model_type, character_coverage=args.character_coverage,
                input_sentence_size=100_000_000, hard_vocab_limit=False,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
        except RuntimeError as e:
            print(f"spm_train: sentencepiece failed: {e}\nspm_train: --vocab_size (the driver's "
                  f"--nbpe) must hold the {chars} characters of the text plus 3 special pieces "
                  f"(at --character_coverage {args.character_coverage}): {chars + 3} at least",
                  file=sys.stderr)
            return 1
    model = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
    pieces = [model.id_to_piece(i) for i in range(model.get_piece_size())
              if not (model.is_unknown(i) or model.is_control(i))]
    print(f"spm_train: {prefix}.model, {args.model_type}, {model.get_piece_size()} pieces "
          f"(--vocab_size {args.vocab_size}) from {len(lines)} transcripts of {args.text}")
    if args.token_list:
        tokens = [BLANK, UNK, *pieces, SOS_EOS]
        Path(args.token_list).parent.mkdir(parents=True, exist_ok=True)
        Path(args.token_list).write_text("\n".join(tokens) + "\n", encoding="utf-8")
        print(f"spm_train: {args.token_list}: {len(tokens)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
