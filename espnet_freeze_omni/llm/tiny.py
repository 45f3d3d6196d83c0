"""Tiny chat LLMs built on the spot, for tests and the CPU-sized recipe.

A tiny LLM is a Hugging Face folder like a real one: `config.json` + weights +
`tokenizer.json` + `tokenizer_config.json` with a chat template, so everything
downstream loads it through `AutoModelForCausalLM` / `AutoTokenizer` exactly as it
would load Qwen2-7B-Instruct. Nothing is downloaded.

The tokenizer follows the family, as in the real models, and never drops a character:
- llama: a sentencepiece BPE (byte_fallback) turned into a `tokenizers` BPE with the same
  pieces and merges (metaspace, like Llama-2);
- qwen2: a byte-level BPE with Qwen2's pre-tokenizer. transformers 5.x rebuilds a
  Qwen2Tokenizer (byte-level) from the saved vocabulary for any `model_type: qwen2`
  folder, whatever `tokenizer_class` says, so a sentencepiece vocabulary there would load
  with different ids.
Other transformers 5.x traps (shared/ESPNET.md): the tokenizer object is built here, saved
with `save_pretrained` as the generic `TokenizersBackend`, and the reload through
`AutoTokenizer` (after the model's config.json is written, since it picks the class) is
checked id for id.
"""

import io
import json
import random
from pathlib import Path
from typing import Iterable, List, Sequence

DEFAULT_TINY_SYSTEM_PROMPT = "You are a helpful assistant."

# Special tokens and jinja chat templates per chat format. "qwen" is the paper's format.
CHAT_FORMATS = {
    "qwen": dict(
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        eos_token="<|endoftext|>",
        bos_token=None,
        template=(
            "{% for message in messages %}"
            "{% if loop.first and message['role'] != 'system' %}"
            "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
            "{% endif %}"
            "{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
            " + '<|im_end|>' + '\n' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        ),
        # Fixed strings of the template, given to the BPE so they get whole pieces.
        template_texts=["system", "user", "assistant"],
    ),
    # Llama-3 style: bos + header tokens + <|eot_id|>; tests that ChatTemplate is generic.
    "llama3": dict(
        special_tokens=["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>", "<|endoftext|>"],
        eos_token="<|eot_id|>",
        bos_token="<|begin_of_text|>",
        template=(
            "{{ bos_token }}"
            "{% for message in messages %}"
            "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
            " + message['content'] | trim + '<|eot_id|>' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}"
            "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
            "{% endif %}"
        ),
        template_texts=["system", "user", "assistant"],
    ),
    # Qwen's special tokens but no chat template: exercises ChatTemplate's fallback.
    "none": dict(
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        eos_token="<|endoftext|>",
        bos_token=None,
        template=None,
        template_texts=["system", "user", "assistant"],
    ),
}

FAMILIES = ("qwen2", "llama")


def train_sentencepiece_bpe(texts: Sequence[str], vocab_size: int):
    """Sentencepiece BPE trained in memory; returns a loaded SentencePieceProcessor."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        # Soft limit: tiny corpora cannot always fill the requested vocabulary.
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        # Identity normalization and kept whitespace: decode(encode(text)) == text.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        # Only <unk>: eos/pad and chat tokens are added as special tokens afterwards.
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def sentencepiece_backend(texts: Sequence[str], vocab_size: int, special_tokens: Sequence[str]):
    """Llama-2 style tokenizer: sentencepiece BPE pieces + merges, metaspace, byte fallback.

    Returns `(tokenizers.Tokenizer, unk_token)`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    # Sentencepiece refuses a vocabulary without room for unk, the 256 bytes and every
    # character: raise a too small request to that minimum.
    chars = set("".join(texts).replace(" ", "\u2581"))
    sp = train_sentencepiece_bpe(texts, max(vocab_size - len(special_tokens), 257 + len(chars)))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    # Sentencepiece BPE applies merges in piece order, so a merge ranks by the piece it
    # makes; every split of a piece into two known pieces is a merge that can make it.
    ranked = []
    for i, piece in enumerate(pieces):
        if sp.is_byte(i) or sp.is_unknown(i) or sp.is_control(i) or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                ranked.append((i, vocab[left], vocab[right], left, right))
    ranked.sort()
    merges = [(left, right) for *_, left, right in ranked]
    # Special tokens follow the pieces, in the order given, as in the real models.
    for token in special_tokens:
        vocab[token] = len(vocab)

    unk = sp.id_to_piece(sp.unk_id())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=True)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),  # the space the pre-tokenizer prepended
    ])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tok, unk


# Qwen2's pre-tokenizer split (GPT-4 style), as transformers' Qwen2Tokenizer rebuilds it.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def byte_level_backend(texts: Sequence[str], vocab_size: int, special_tokens: Sequence[str]):
    """Qwen2 style tokenizer: byte-level BPE (every byte is a token, nothing is dropped).

    transformers 5.x ignores `tokenizer_class` for `model_type: qwen2` and rebuilds a
    Qwen2Tokenizer from the saved vocab and merges, so a qwen2 folder must hold exactly
    the structure Qwen2Tokenizer builds: NFC, regex split + byte-level, no unk.
    Returns `(tokenizers.Tokenizer, unk_token)`; byte-level BPE never emits unk, but
    Qwen2Tokenizer names `<|endoftext|>` as unk on reload, so the built one must too.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, trainers

    def make(vocab=None, merges=None):
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                                   byte_fallback=False))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        return tok

    tok = make()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    vocab = dict(state["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    # Special tokens follow the pieces, in the order given, as in the real models.
    for token in special_tokens:
        vocab[token] = len(vocab)
    tok = make(vocab, merges)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tok, "<|endoftext|>"


def build_tiny_tokenizer(texts: Sequence[str], vocab_size: int = 500, chat_format: str = "qwen",
                         family: str = "qwen2"):
    """A transformers tokenizer with the chat special tokens and chat template.

    qwen2: byte-level BPE like Qwen2's; llama: sentencepiece BPE with byte fallback like
    Llama-2's. Either way no character is ever dropped.
    """
    from transformers import TokenizersBackend

    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"chat_format must be one of {sorted(CHAT_FORMATS)}, got {chat_format!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    fmt = CHAT_FORMATS[chat_format]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("build_tiny_tokenizer needs at least one non-empty text")
    # The template's fixed strings join the corpus so that they get whole pieces.
    corpus = list(texts) + [DEFAULT_TINY_SYSTEM_PROMPT] + fmt["template_texts"]
    backend = byte_level_backend if family == "qwen2" else sentencepiece_backend
    tok, unk = backend(corpus, vocab_size, fmt["special_tokens"])

    extra = [t for t in fmt["special_tokens"] if t not in (fmt["eos_token"], fmt["bos_token"])]
    kwargs = dict(
        tokenizer_object=tok,
        eos_token=fmt["eos_token"],
        pad_token="<|endoftext|>",
        additional_special_tokens=extra,
        clean_up_tokenization_spaces=False,
    )
    if unk:
        kwargs["unk_token"] = unk
    if fmt["bos_token"]:
        kwargs["bos_token"] = fmt["bos_token"]
    if fmt["template"]:
        kwargs["chat_template"] = fmt["template"]
    return TokenizersBackend(**kwargs)


def check_tokenizer_roundtrip(tokenizer, reloaded, probes: Iterable[str]) -> None:
    """Raise if the reloaded tokenizer gives any different id, special token or template."""
    if len(tokenizer) != len(reloaded):
        raise AssertionError(
            f"reloaded tokenizer has {len(reloaded)} tokens, built {len(tokenizer)}")
    for name in ("eos_token_id", "pad_token_id", "bos_token_id", "unk_token_id"):
        if getattr(tokenizer, name) != getattr(reloaded, name):
            raise AssertionError(
                f"reloaded {name} {getattr(reloaded, name)} != {getattr(tokenizer, name)}")
    if tokenizer.get_vocab() != reloaded.get_vocab():
        raise AssertionError("reloaded vocabulary differs from the built one")
    for text in probes:
        for special in (False, True):  # with and without automatic bos/eos
            a = tokenizer.encode(text, add_special_tokens=special)
            b = reloaded.encode(text, add_special_tokens=special)
            if a != b:
                raise AssertionError(
                    f"reloaded tokenizer encodes {text!r} as {b}, built one as {a}")
    if tokenizer.chat_template != reloaded.chat_template:
        raise AssertionError("reloaded chat template differs from the built one")


def build_tiny_llm(
    out_dir,
    texts: Sequence[str],
    family: str = "qwen2",
    vocab_size: int = 500,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    chat_format: str = "qwen",
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random-weight Qwen2/Llama causal LM + BPE tokenizer trained on `texts`.

    vocab_size counts the special tokens; small corpora may give fewer tokens, and a
    request below the minimum (every byte, and for llama every character) is raised to
    it. The model's vocabulary is exactly the tokenizer's. Returns `out_dir`.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must divide by num_heads ({num_heads}), "
            f"and num_heads by num_kv_heads ({num_kv_heads})"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = list(texts)

    tokenizer = build_tiny_tokenizer(texts, vocab_size, chat_format, family)
    end_of_turn = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|eot_id|>")
                   if t in tokenizer.get_vocab()]
    config_kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "qwen2":
        from transformers import Qwen2Config as Config, Qwen2ForCausalLM as Model
    else:
        from transformers import LlamaConfig as Config, LlamaForCausalLM as Model
    # Random weights, reproducible per seed without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Model(Config(**config_kwargs))
    # Greedy by default; stop on the end-of-turn token as well as eos.
    model.generation_config = GenerationConfig(
        do_sample=False,
        eos_token_id=list(dict.fromkeys(end_of_turn + [tokenizer.eos_token_id])),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "tiny_llm.json").write_text(json.dumps(
        dict(family=family, chat_format=chat_format, seed=seed,
             **{k: v for k, v in config_kwargs.items() if not k.endswith("token_id")}),
        indent=2) + "\n")

    # Reload the way every user will (AutoTokenizer picks its class from config.json too,
    # so this must come after the model is saved) and insist on identical ids.
    reloaded = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    probes = random.Random(seed).sample(texts, min(len(texts), 50))
    probes += ["ünïcödé ✓ 123 漢字", "two  spaces and a\nnewline"]
    if tokenizer.chat_template:
        probes.append(tokenizer.apply_chat_template(
            [{"role": "user", "content": texts[0]}], tokenize=False, add_generation_prompt=True))
    check_tokenizer_roundtrip(tokenizer, reloaded, probes)
    return out_dir


def read_texts(path) -> List[str]:
    """Lines of a text file, or every turn's content of a dialog JSON-lines file (.jsonl)."""
    from espnet_freeze_omni.llm.dialogs import read_dialogs

    path = Path(path)
    if path.suffix == ".jsonl":
        return [turn["content"] for dialog in read_dialogs(path) for turn in dialog["turns"]]
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    with path.open(encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def default_tiny_texts() -> List[str]:
    """A few sentences, for building a throwaway tokenizer without a corpus."""
    return [
        "What is the capital of Zorbia?", "The capital of Zorbia is Quenta.",
        "Who wrote the red book?", "Mira Holt wrote the red book.",
        "How many moons does Telos have?", "Telos has three moons.",
        "Hello, how are you today?", "I am fine, thank you.",
    ]

