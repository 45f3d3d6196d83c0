"""Speech synthesis for one text segment: frozen LLM -> speech decoder -> codec -> PCM.

    generate_codec_tokens(decoder, text_embeds, prefix)   yields codec ids one by one:
        prefill (prefix K/V + text + SOS in one pass), then one cached AR step per token;
        top-k sampling (k=2 by default; k=1 is greedy), stop at EOS or after max_tokens;
        with guidance_scale != 1, classifier-free guidance against the text-free context.
    SpeechSynthesizer(decoder, llm, codec).stream(token_ids, hidden_states)
        embeds the segment's tokens with the frozen LLM's own table, generates codec
        tokens, and pushes them through a PacketDecoder so PCM comes out packet by packet
        (first packet after 20 + 10 look-ahead tokens, SPEC §3).
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch

from espnet_freeze_omni.speech_decoder.decoder import SpeechDecoder


def sample_codec_token(
    logits: torch.Tensor,
    decoder: SpeechDecoder,
    top_k: int = 2,
    allow_eos: bool = True,
    generator: Optional[torch.Generator] = None,
) -> int:
    """Pick the next codec id from logits (1, V) or (V,).

    Only codes and EOS can be produced: BOS, SOS and PAD are input-only symbols.
    top_k = 1 is greedy (and uses no randomness).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    logits = logits.reshape(-1).float().clone()
    blocked = [decoder.bos_id, decoder.sos_id, decoder.pad_id]
    if not allow_eos:
        blocked.append(decoder.eos_id)
    logits[blocked] = float("-inf")
    if top_k == 1:
        return int(logits.argmax())
    top_logits, top_ids = logits.topk(min(top_k, decoder.vocab_size + 1))
    probs = torch.softmax(top_logits, dim=-1)
    choice = torch.multinomial(probs.cpu(), 1, generator=generator)
    return int(top_ids[int(choice)])


@torch.no_grad()
def generate_codec_tokens(
    decoder: SpeechDecoder,
    text_embeds: torch.Tensor,
    prefix: Optional[torch.Tensor] = None,
    top_k: int = 2,
    max_tokens: int = 1000,
    min_tokens: int = 0,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
    guidance_scale: float = 1.0,
) -> Iterator[int]:
    """Yield codec ids for one segment as soon as each is sampled (EOS is not yielded).

    Args:
        text_embeds: (1, N, llm_hidden) or (N, llm_hidden): the segment's tokens embedded
            by the frozen LLM.
        prefix: the LLM's final hidden states for the same tokens, same shapes; used when
            the decoder has a prefix decoder.
        top_k: sample among the k most likely tokens (2 in the paper; 1 = greedy).
        max_tokens: hard bound per segment (1000 = 25 s at 40 Hz).
        min_tokens: EOS is not allowed before this many tokens (benchmarks use it).
        use_cache: False recomputes the whole sequence every step (a reference for tests).
        generator: torch.Generator (CPU) for reproducible sampling.
        guidance_scale: classifier-free guidance. 1 (the default) samples from the
            decoder as it is; s > 1 samples from log p(c | text) + (s - 1) * (log p(c |
            text) - log p(c)), where p(c) is the same stack given BOS alone, a second cached
            pass per token. Meant for decoders trained with `condition_dropout`.
    """
    if guidance_scale <= 0:
        raise ValueError(f"guidance_scale must be > 0, got {guidance_scale}")
    if text_embeds.dim() == 2:
        text_embeds = text_embeds[None]
    if prefix is not None and prefix.dim() == 2:
        prefix = prefix[None]
    if text_embeds.size(0) != 1:
        raise ValueError(f"generate_codec_tokens handles one segment, got batch {text_embeds.size(0)}")
    if not decoder.use_prefix:
        prefix = None
    was_training = decoder.training
    decoder.eval()
    guided = guidance_scale != 1.0
    try:
        if use_cache:
            logits, cache, position = decoder.prefill(text_embeds, prefix)
            if guided:
                free_logits, free_cache, free_position = decoder.prefill(None)
        else:
            logits = decoder.logits_uncached(text_embeds, _as_codes([], text_embeds), prefix)
            if guided:
                free_logits = decoder.logits_uncached(None, _as_codes([], text_embeds))
        generated: List[int] = []
        for i in range(max_tokens):
            if guided:
                cond = logits.float().log_softmax(-1)
                free = free_logits.float().log_softmax(-1)
                logits = cond + (guidance_scale - 1.0) * (cond - free)
            token = sample_codec_token(
                logits, decoder, top_k, allow_eos=i >= min_tokens, generator=generator
            )
            if token == decoder.eos_id:
                return
            generated.append(token)
            yield token
            if i + 1 == max_tokens:
                return
            if use_cache:
                step_in = torch.full((1, 1), token, dtype=torch.long, device=text_embeds.device)
                logits = decoder.step(step_in, position, cache)
                position += 1
                if guided:
                    free_logits = decoder.step(step_in, free_position, free_cache)
                    free_position += 1
            else:
                codes = _as_codes(generated, text_embeds)
                logits = decoder.logits_uncached(text_embeds, codes, prefix)
                if guided:
                    free_logits = decoder.logits_uncached(None, codes)
    finally:
        decoder.train(was_training)


def _as_codes(tokens: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(tokens), dtype=torch.long, device=like.device)


class SpeechSynthesizer:
    """Segment -> PCM packets, the speech-output path of a dialogue turn.

    Args:
        decoder: a trained SpeechDecoder (eval mode is set while generating).
        llm: the FrozenLLM whose embedding table embeds the segment's tokens.
        codec: an AbsCodec (40 Hz tokens, 24 kHz PCM); None = tokens only.
        top_k, max_tokens: sampling controls (SPEC §2: 2 and 1000).
        packet_conf: PacketDecoder keyword arguments (first_packet, lookahead, packet, overlap).
        seed: seed of the sampling generator (None = nondeterministic).
        guidance_scale: classifier-free guidance (1 = off; see `generate_codec_tokens`).
        token_splitter: the model's `FinerTokenSplitter` when it was trained with
            `decoder_bpe_merges`: the segment's tokens are split the same way before they
            are embedded (the hidden states stay one per LLM token).
    """

    def __init__(
        self,
        decoder: SpeechDecoder,
        llm=None,
        codec=None,
        top_k: int = 2,
        max_tokens: int = 1000,
        packet_conf: Optional[dict] = None,
        seed: Optional[int] = None,
        guidance_scale: float = 1.0,
        token_splitter=None,
    ):
        if guidance_scale <= 0:
            raise ValueError(f"guidance_scale must be > 0, got {guidance_scale}")
        self.decoder = decoder
        self.llm = llm
        self.codec = codec
        self.top_k = top_k
        self.max_tokens = max_tokens
        self.packet_conf = dict(packet_conf or {})
        self.guidance_scale = guidance_scale
        self.token_splitter = token_splitter
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    @classmethod
    def from_pretrained(
        cls,
        model_file: str,
        config_file: Optional[str] = None,
        llm_path: Optional[str] = None,
        codec_conf=None,
        device: str = "cpu",
        **kwargs,
    ) -> "SpeechSynthesizer":
        """Load a speech-output checkpoint trained with SpeechOutputTask.

        config_file defaults to the config.yaml next to model_file; llm_path replaces the
        LLM folder recorded there (the LLM is never inside the checkpoint); codec_conf is
        handed to `load_codec`.
        """
        import argparse
        from pathlib import Path

        from espnet_freeze_omni.data.yaml_mapping import read_yaml_mapping
        from espnet_freeze_omni.tasks.speech_output import SpeechOutputTask

        config_file = Path(config_file or Path(model_file).parent / "config.yaml")
        conf = read_yaml_mapping(config_file, "training config")
        if llm_path is not None:
            conf["llm_conf"] = {**(conf.get("llm_conf") or {}), "path": str(llm_path)}
        model = SpeechOutputTask.build_model(argparse.Namespace(**conf))
        state = torch.load(model_file, map_location="cpu")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{model_file} does not match {config_file}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        model.to(device).eval()
        codec = None
        if codec_conf is not None:
            from espnet_freeze_omni.codec import load_codec

            codec = load_codec(codec_conf)
        return cls(model.speech_decoder, llm=model.llm, codec=codec,
                   token_splitter=model.token_splitter, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.decoder.embedding.weight.device

    def segment_inputs(
        self, token_ids: Sequence[int], hidden_states: Optional[torch.Tensor] = None
    ):
        """(text_embeds (1, N, H), prefix (1, N, H) or None) for a segment's tokens."""
        if self.llm is None:
            raise ValueError("SpeechSynthesizer needs the frozen LLM to embed token ids")
        if self.token_splitter is not None:
            token_ids = self.token_splitter.split(token_ids)
        # On the LLM's own device: FrozenLLM follows its inputs, and must not be moved here.
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.llm.device)
        with torch.no_grad():
            text_embeds = self.llm.embed_tokens(ids)
        dtype = self.decoder.embedding.weight.dtype
        text_embeds = text_embeds.to(self.device, dtype)
        prefix = None
        if hidden_states is not None and self.decoder.use_prefix:
            prefix = hidden_states.reshape(1, -1, hidden_states.size(-1)).to(self.device, dtype)
        return text_embeds, prefix

    def tokens(
        self,
        token_ids: Sequence[int],
        hidden_states: Optional[torch.Tensor] = None,
        top_k: Optional[int] = None,
    ) -> Iterator[int]:
        """Codec ids for one segment, streamed."""
        text_embeds, prefix = self.segment_inputs(token_ids, hidden_states)
        return generate_codec_tokens(
            self.decoder,
            text_embeds,
            prefix,
            top_k=self.top_k if top_k is None else top_k,
            max_tokens=self.max_tokens,
            generator=self.generator,
            guidance_scale=self.guidance_scale,
        )

    def stream(
        self,
        token_ids: Sequence[int],
        hidden_states: Optional[torch.Tensor] = None,
        top_k: Optional[int] = None,
    ) -> Iterator[np.ndarray]:
        """PCM packets (float32, codec sample rate) for one segment, as they are ready."""
        if self.codec is None:
            raise ValueError("SpeechSynthesizer.stream needs a codec")
        yield from stream_pcm(
            self.codec, self.tokens(token_ids, hidden_states, top_k), **self.packet_conf
        )

    def synthesize(
        self,
        token_ids: Sequence[int],
        hidden_states: Optional[torch.Tensor] = None,
        top_k: Optional[int] = None,
    ) -> np.ndarray:
        """Whole segment as one waveform."""
        packets = list(self.stream(token_ids, hidden_states, top_k))
        return np.concatenate(packets) if packets else np.zeros(0, dtype=np.float32)


def stream_pcm(codec, tokens: Iterator[int], **packet_conf) -> Iterator[np.ndarray]:
    """Push streamed codec ids through a PacketDecoder; yield each PCM packet when ready."""
    from espnet_freeze_omni.codec.packets import PacketDecoder

    packets = PacketDecoder(codec, **packet_conf)
    for token in tokens:
        for pcm in packets.push([token]):
            yield _to_numpy(pcm)
    for pcm in _as_list(packets.flush()):
        yield _to_numpy(pcm)


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _to_numpy(pcm) -> np.ndarray:
    if isinstance(pcm, torch.Tensor):
        pcm = pcm.detach().float().cpu().numpy()
    return np.asarray(pcm, dtype=np.float32).reshape(-1)
