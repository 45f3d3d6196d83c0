"""Build a tiny random-weight chat LLM (Qwen2 or Llama) with a BPE tokenizer trained on a text.

    python -m espnet_freeze_omni.bin.build_tiny_llm --family qwen2 --text_file lm_text.txt \
        --out_dir exp/tiny_llm [--vocab_size 1000 --hidden_size 256 --num_layers 4 ...]

--text_file: one sentence per line, or dialog JSON lines (`.jsonl`; every turn's content
is used). The folder loads like any Hugging Face LLM (AutoModelForCausalLM/AutoTokenizer).
"""
import argparse
import time

from espnet_freeze_omni.llm.tiny import CHAT_FORMATS, FAMILIES, build_tiny_llm, read_texts


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=FAMILIES, default="qwen2")
    parser.add_argument("--text_file", required=True, help="tokenizer training text")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--chat_format", choices=sorted(CHAT_FORMATS), default="qwen")
    parser.add_argument("--vocab_size", type=int, default=500,
                        help="tokenizer size, special tokens included: an upper bound for "
                        "small corpora, raised to the minimum (all bytes) if smaller")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--num_kv_heads", type=int, default=2)
    parser.add_argument("--intermediate_size", type=int, default=128)
    parser.add_argument("--max_position_embeddings", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    start = time.time()
    texts = read_texts(args.text_file)
    out = build_tiny_llm(
        args.out_dir, texts, family=args.family, vocab_size=args.vocab_size,
        hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads, intermediate_size=args.intermediate_size,
        seed=args.seed, chat_format=args.chat_format,
        max_position_embeddings=args.max_position_embeddings,
    )
    print(f"tiny {args.family} LLM ({len(texts)} texts) written to {out} "
          f"in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
