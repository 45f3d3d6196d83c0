"""Speech2Speech with random weights at named shapes, for latency and serving benchmarks.

Random weights cannot hold a dialogue, but they cost what trained ones cost: the benchmarks
(bin/benchmark_latency, bin/benchmark_serving) time the session on them at the tiny shapes
of a reference harness of the authors' loop, or at the paper's shapes on a GPU. Everything
is built on the spot through the Tasks' own builders (nothing downloaded): a Qwen2 folder
with a BPE tokenizer trained on made-up text, the speech-input model, the speech decoder on
the same frozen LLM, and an embedded codec with random codebooks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import yaml

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Random-weight shapes. tokenizer_vocab: the BPE trained on the spot; the LLM's embedding and
# output layer have vocab_size rows whatever the tokenizer holds (Qwen2's rows outnumber its
# tokenizer's too), so the compute is that of the named model.
SHAPES: Dict[str, dict] = {
    "tiny": dict(
        input_config="speech_input_stage3_tiny.yaml",
        output_config="speech_output_stage3_tiny.yaml",
        # the release's subsampling has d channels (the tiny training config narrows it)
        encoder=dict(output_size=256, num_blocks=4, attention_heads=4, linear_units=1024,
                     chunk_size=4, left_chunks=16, subsampling_channels=256),
        llm=dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=1024, vocab_size=2000,
                 max_position_embeddings=4096, rope_theta=10000.0),
        llm_dtype="float32",
        tokenizer_vocab=2000,
        decoder=dict(hidden_size=64, num_layers=4, num_heads=4, intermediate_size=256,
                     vocab_size=1024),
        codec_vocab=1024,
    ),
    "paper": dict(
        input_config="speech_input_stage3_paper.yaml",
        output_config="speech_output_stage3_paper.yaml",
        encoder={},  # the config's: 24 x d 1024, 16 heads, FFN 4096, chunk 4, left 16
        # Qwen2-7B-Instruct's config.json
        llm=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                 max_position_embeddings=32768, rope_theta=1000000.0),
        llm_dtype="bfloat16",
        tokenizer_vocab=2000,
        decoder={},  # the config's: 896 x 4 layers, 14 heads, FFN 4864, 1024 codes
        codec_vocab=1024,
    ),
}

# Short questions the benchmarks speak (espeak-ng) and the random tokenizer is trained on.
QUESTIONS = (
    "what color is the sky", "where does anna live", "how old is tom",
    "what is the capital of zorvia", "who owns the red car", "what does maria do for work",
    "what pet does leo have", "when does the shop open", "what is the name of the river",
    "which fruit does sam like", "how many moons does telos have", "who wrote the green book",
    "what time is the train to quell", "where did ben put his keys", "what is the tallest tree",
    "how far is the lake from the town", "what does the baker sell", "who lives next to maria",
    "what is the weather like today", "which road goes to the harbour", "how do you make tea",
    "what language do they speak in zorvia", "when is the next full moon",
    "why is the sea salty",
)


def write_random_llm(out_dir: Path, shapes: dict, texts: Sequence[str], device: str,
                     seed: int) -> Path:
    """A random-weight Qwen2 folder of the given shapes with a BPE tokenizer trained on
    `texts`. The weights are drawn on `device` in the LLM's dtype (a 7B model would not fit
    a CPU's time budget in float32) and saved as a Hugging Face folder, which FrozenLLM
    loads like any other."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from espnet_freeze_omni.llm.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(texts, vocab_size=shapes["tokenizer_vocab"], family="qwen2")
    config = Qwen2Config(**shapes["llm"], tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    dtype = getattr(torch, shapes["llm_dtype"])
    default = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(
        do_sample=False, eos_token_id=[end_of_turn, tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    del model
    # after config.json: AutoTokenizer picks its class from it (llm/tiny.py)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def pseudo_texts(seed: int, sentences: int = 3000) -> List[str]:
    """Enough made-up text for a BPE of a few thousand pieces (and the questions)."""
    rng = np.random.RandomState(seed)
    onsets = ["", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
              "br", "st", "tr", "ch", "sh", "th", "qu", "pl", "gr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
    codas = ["", "", "n", "r", "s", "l", "m", "t", "nd", "st"]
    words = ["".join(onsets[rng.randint(len(onsets))] + vowels[rng.randint(len(vowels))]
                     + codas[rng.randint(len(codas))] for _ in range(rng.randint(1, 4)))
             for _ in range(4000)]
    texts = list(QUESTIONS)
    for _ in range(sentences):
        sentence = " ".join(words[rng.randint(len(words))] for _ in range(rng.randint(4, 12)))
        texts.append(sentence.capitalize() + (", " + words[rng.randint(len(words))]
                                              if rng.rand() < 0.3 else "") + ".")
    return texts


def build_random_s2s(shape: str, work: Path, device: str, seed: int, decode_kwargs: dict):
    """Speech2Speech with random weights at `shape`, built through the Tasks' own builders
    around one FrozenLLM (the speech-output model reuses the speech-input model's LLM)."""
    from espnet_freeze_omni.codec.embedded import EmbeddedCodec, EmbeddedCodecConfig
    from espnet_freeze_omni.inference.speech2speech import (
        Speech2Speech,
        build_speech_output_model,
    )
    from espnet_freeze_omni.inference.speech_input_inference import SpeechInputInference
    from espnet_freeze_omni.tasks.speech_input import SpeechInputTask

    shapes = SHAPES[shape]
    rng = np.random.RandomState(seed)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    llm_dir = work / "llm"
    marker = llm_dir / "benchmark_shapes.json"
    wanted = json.dumps(dict(shapes=shapes, seed=seed), sort_keys=True)
    if not (marker.is_file() and marker.read_text() == wanted):  # --work_dir keeps it
        write_random_llm(llm_dir, shapes, pseudo_texts(seed), device, seed)
        marker.write_text(wanted)
    chars = sorted({c for q in QUESTIONS for c in q if c != " "})
    (work / "tokens.txt").write_text(
        "\n".join(["<blank>", "<unk>", "<space>", *chars, "<sos/eos>"]) + "\n")
    stats = work / "feats_stats.npz"
    np.savez(stats, count=np.array(1000.0), sum=rng.randn(80) * 100.0,
             sum_square=np.full(80, 1000.0 * 20.0))

    argv = ["--config", str(CONF_DIR / shapes["input_config"]),
            "--token_list", str(work / "tokens.txt"),
            "--llm_conf", f"path={llm_dir}", "--llm_conf", f"dtype={shapes['llm_dtype']}",
            "--normalize_conf", f"stats_file={stats}", "--output_dir", str(work / "exp")]
    for key, value in shapes["encoder"].items():
        argv += ["--encoder_conf", f"{key}={value}"]
    args = SpeechInputTask.get_parser().parse_args(argv)
    torch.manual_seed(seed)
    model = SpeechInputTask.build_model(args)
    listener = SpeechInputInference(model, device=device,
                                    max_new_tokens=decode_kwargs.pop("max_new_tokens", 128))

    with open(CONF_DIR / shapes["output_config"], encoding="utf-8") as f:
        output_conf = yaml.safe_load(f)
    output_conf["speech_decoder_conf"].update(shapes["decoder"])
    output_model = build_speech_output_model(output_conf, model.llm)

    vocab = output_model.speech_decoder.vocab_size
    cfg = EmbeddedCodecConfig(vocab_size=vocab)  # default Griffin-Lim iterations, as trained
    codec = EmbeddedCodec(
        cfg, rng.randn(vocab, cfg.frames_per_token * cfg.n_mels).astype(np.float32),
        np.abs(rng.randn(vocab, cfg.frames_per_token, cfg.n_freq)).astype(np.float32) * 0.01)
    return Speech2Speech(listener, output_model.speech_decoder, codec,
                         token_splitter=output_model.token_splitter, **decode_kwargs)


def describe_shapes(s2s) -> str:
    def millions(module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    encoder, llm, decoder = s2s.listener.model.encoder, s2s.llm, s2s.synthesizer.decoder
    cfg = llm.model.config
    return (f"encoder d {encoder.output_size()} ({millions(encoder):.1f}M params); "
            f"LLM {cfg.model_type} hidden {cfg.hidden_size} x {cfg.num_hidden_layers} layers, "
            f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV, FFN "
            f"{cfg.intermediate_size}, vocab {llm.vocab_size} ({millions(llm.model):.1f}M "
            f"params, {str(llm.dtype).replace('torch.', '')}); speech decoder hidden "
            f"{decoder.hidden_size}, {decoder.vocab_size} codes ({millions(decoder):.1f}M "
            f"params); codec {type(s2s.codec).__name__} ({s2s.codec.vocab_size} codes)")
