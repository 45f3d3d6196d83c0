"""Decoding with trained speech-input models: CTC ASR, ASR through the LLM, spoken Q&A,
and the chunk-by-chunk listening loop that drives turn-taking.

The listening loop is the streaming path of SPEC §3: features are fed 160 ms at a time
through the encoder's K/V caches and the adapter's conv cache, each chunk's two LLM
embeddings extend the frozen LLM's K/V cache, and the state head reads the last position.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_freeze_omni.data.audio import load_audio, parse_sample_rate
from espnet_freeze_omni.data.yaml_mapping import read_yaml_mapping
from espnet_freeze_omni.llm.chat_template import ChatTemplate
from espnet_freeze_omni.models.speech_input import (
    STATE_LISTEN,
    EncoderCTCModel,
    SpokenDialogModel,
)


@dataclasses.dataclass
class ListenResult:
    """Per-chunk duplex states of one utterance and the first decision taken."""

    states: List[int]
    chunk_seconds: float
    decision: int  # first non-listen state, or STATE_LISTEN if none
    # when it could be taken live: the end of its chunk plus the look-ahead that completes
    # the chunk (chunk_lookahead_samples), as a DuplexSession takes it; None if never
    decision_time: Optional[float]


@torch.no_grad()  # on a generator: grad mode is switched around each step, not leaked
def greedy_steps(llm, inputs_embeds: torch.Tensor, max_new_tokens: int,
                 past_key_values=None) -> Iterator[Tuple[int, torch.Tensor]]:
    """Greedy tokens after `inputs_embeds` (batch 1), one at a time, until an end-of-turn
    token (not yielded) or `max_new_tokens`.

    Yields (token id, hidden) where hidden (H,) is the LLM's final hidden state at the
    position that PREDICTED the token (the last prompt position for the first one): the
    per-token hidden state the speech decoder's prefix is trained on
    (SpeechOutputModel.answer_hidden_states).
    """
    out = (llm.prefill(inputs_embeds) if past_key_values is None
           else llm.extend(inputs_embeds, past_key_values))
    stop = set(llm.eos_token_ids)
    for _ in range(max_new_tokens):
        nxt = int(out.logits[0, -1].argmax())
        if nxt in stop:
            return
        yield nxt, out.hidden[0, -1]
        token = torch.tensor([[nxt]], device=inputs_embeds.device)
        out = llm.extend(llm.embed_tokens(token), out.past_key_values)


def greedy_continue(llm, inputs_embeds: torch.Tensor, max_new_tokens: int,
                    past_key_values=None) -> List[int]:
    """Greedy tokens after `inputs_embeds` (batch 1) until an end-of-turn token."""
    return [token for token, _ in greedy_steps(llm, inputs_embeds, max_new_tokens, past_key_values)]


def read_train_config(config_file: str | Path, llm_conf: Optional[Dict] = None) -> Dict:
    """A training config.yaml as a dict; `llm_conf` entries (path, dtype) replace the
    recorded ones (the LLM is never inside a checkpoint, only named by the config)."""
    conf = read_yaml_mapping(config_file, "training config")
    overrides = {k: v for k, v in (llm_conf or {}).items() if v is not None}
    if overrides:
        conf["llm_conf"] = {**(conf.get("llm_conf") or {}), **overrides}
    # The checkpoint fills every parameter: no initialization is needed, and one this
    # espnet version no longer knows must not stop a trained model from loading.
    conf["init"] = None
    return conf


def load_trained_state(model: torch.nn.Module, model_file: str | Path,
                       config_file: str | Path, device: str = "cpu") -> torch.nn.Module:
    """Load a checkpoint saved by espnet's trainer (a plain state_dict) into `model`.

    Strict: a checkpoint of another stage or size is an error naming both files, never a
    model left half random.
    """
    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"model file not found: {model_file}")
    state = torch.load(model_file, map_location=device)
    for wrapper in ("module", "state_dict"):  # deepspeed / lightning checkpoints
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{model_file} does not match the model of {config_file}: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    return model.to(device).eval()


def _frontend_sample_rate(conf: Dict) -> int:
    """The sample rate a training config's frontend reads (espnet allows "16k")."""
    return parse_sample_rate((conf.get("frontend_conf") or {}).get("fs", 16000))


class SpeechInputInference:
    """Wraps a trained speech-input model (any of the three stages) for decoding."""

    def __init__(self, model: EncoderCTCModel, device: str = "cpu", max_new_tokens: int = 128,
                 sample_rate: int = 16000, token_type: str = "char",
                 bpemodel: Optional[str] = None):
        self.model = model.to(device).eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.sample_rate = sample_rate  # what the frontend expects; callers resample to it
        self.template = ChatTemplate(model.llm.tokenizer) if model.needs_llm else None
        # CTC tokens -> text as the training config tokenized (char, word or bpe pieces)
        self.tokenizer = None
        if token_type != "char":
            from espnet2.text.build_tokenizer import build_tokenizer

            if token_type == "bpe" and not (bpemodel and Path(bpemodel).is_file()):
                raise FileNotFoundError(f"token_type bpe needs its sentencepiece model, "
                                        f"bpemodel {bpemodel!r} is not a file")
            self.tokenizer = build_tokenizer(token_type=token_type, bpemodel=bpemodel)

    @classmethod
    def from_files(cls, train_config: str | Path, model_file: str | Path, device: str = "cpu",
                   llm_path: Optional[str] = None, llm_conf: Optional[Dict] = None,
                   **kwargs) -> "SpeechInputInference":
        """Build from an espnet training config + checkpoint; `llm_path` (or `llm_conf`
        path=..., dtype=...) overrides the LLM recorded in the config (the LLM is never
        inside the checkpoint)."""
        from espnet_freeze_omni.tasks.speech_input import SpeechInputTask

        llm_conf = dict(llm_conf or {})
        if llm_path is not None:
            llm_conf["path"] = str(llm_path)
        conf = read_train_config(train_config, llm_conf)
        if not Path(model_file).is_file():  # before the (possibly large) LLM loads
            raise FileNotFoundError(f"model file not found: {model_file}")
        model = SpeechInputTask.build_model(argparse.Namespace(**conf))
        load_trained_state(model, model_file, train_config, device)
        kwargs.setdefault("sample_rate", _frontend_sample_rate(conf))
        kwargs.setdefault("token_type", conf.get("token_type") or "char")
        kwargs.setdefault("bpemodel", conf.get("bpemodel"))
        return cls(model, device=device, **kwargs)

    # ------------------------------------------------------------------ helpers
    def load(self, spec: str, utt_id: Optional[str] = None) -> np.ndarray:
        """A wav.scp value (file or pipe) as the model hears it: mono at `sample_rate`."""
        return load_audio(spec, self.sample_rate, utt_id)

    def _batch(self, wav: np.ndarray):
        speech = torch.as_tensor(np.asarray(wav, dtype=np.float32), device=self.device)[None]
        return speech, torch.tensor([speech.size(1)], device=self.device)

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    def tokens_to_text(self, ids: Sequence[int]) -> str:
        tokens = [self.model.token_list[i] for i in ids]
        if self.tokenizer is not None:  # words joined by spaces, or sentencepiece pieces
            return self.tokenizer.tokens2text(tokens).strip()
        return "".join(" " if t == "<space>" else t for t in tokens).strip()

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def ctc_transcribe(self, wav: np.ndarray) -> str:
        return self.tokens_to_text(self.model.ctc_greedy_decode(*self._batch(wav))[0])

    @torch.no_grad()
    def llm_transcribe(self, wav: np.ndarray) -> str:
        """ASR through the frozen LLM (stage-2 task embeddings, also kept by stage 3)."""
        return self.llm_generate(wav, task="asr")

    @torch.no_grad()
    def llm_generate(self, wav: np.ndarray, history: Optional[List[Dict[str, str]]] = None,
                     task: str = "default") -> str:
        """The frozen LLM's greedy reply to the audio: the transcript for a stage-2 model,
        the answer for a stage-3 model (or the transcript with task="asr")."""
        ids = greedy_continue(self.model.llm, self.spoken_turn_inputs(wav, history, task),
                              self.max_new_tokens)
        return self.model.llm.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @torch.no_grad()
    def spoken_turn_inputs(self, wav: np.ndarray, history: Optional[List[Dict[str, str]]] = None,
                           task: str = "default") -> torch.Tensor:
        """LLM input embeddings (1, L, H) of a spoken user turn, ready for the reply:
        chat prefix (system + history), learned vectors, audio, chat suffix."""
        if self.template is None:
            raise ValueError("this model has no LLM (stage 1): use ctc_transcribe")
        model = self.model
        audio, audio_lengths, _, _ = model.audio_embeddings(*self._batch(wav))
        prefix = self._ids(self.template.prefix_ids(history))
        suffix = self._ids(self.template.suffix_ids())
        empty = self._ids([])
        inputs, _, _, _ = model.assemble(
            prefix, torch.tensor([prefix.size(1)]), audio, audio_lengths,
            suffix, torch.tensor([suffix.size(1)]), empty, torch.tensor([0]), task=task)
        return inputs

    @functools.cached_property
    def chunk_lookahead_samples(self) -> int:
        """Input samples past the end of an encoder chunk that the streaming frontend,
        encoder and adapter need before they give out that chunk's LLM embeddings (the STFT
        window's right half, the subsampling convs' right context): chunk c of audio that
        starts at sample 0 is complete, and the state head can judge it, once (c + 1) *
        chunk + this many samples have arrived. A live session cuts its ticks there
        (duplex_session). Found by feeding silence to a fresh streaming pipeline, so it
        holds for any frontend, encoder or adapter that streams."""
        from espnet_freeze_omni.inference.streaming_frontend import streaming_frontend_for

        model = self.model
        chunk = int(round(model.chunk_seconds * self.sample_rate))

        @torch.no_grad()
        def completes_a_chunk(num_samples: int) -> bool:
            frontend = streaming_frontend_for(model.frontend)
            feats = frontend.push(np.zeros(num_samples, dtype=np.float32))
            if feats.size(1) == 0:
                return False
            if model.normalize is not None:
                feats, _ = model.normalize(feats, torch.tensor([feats.size(1)]))
            enc, _ = model.encoder.forward_chunk(feats.to(self.device),
                                                 model.encoder.init_streaming_state(1))
            if enc.size(1) == 0:
                return False
            emb, _ = model.adapter.forward_chunk(enc, model.adapter.init_cache(1))
            return emb.size(1) >= model.embeddings_per_chunk

        lo, hi = 1, 2 * chunk
        while not completes_a_chunk(hi):
            lo, hi = hi, 2 * hi
            if hi > 64 * chunk:
                raise ValueError(f"{type(model.encoder).__name__}: no chunk out of "
                                 f"{hi} samples of audio; is it a streaming encoder?")
        while lo < hi:  # the fewest samples that complete the first chunk
            mid = (lo + hi) // 2
            if completes_a_chunk(mid):
                hi = mid
            else:
                lo = mid + 1
        return hi - chunk

    @torch.no_grad()
    def listen(self, wav: np.ndarray, history: Optional[List[Dict[str, str]]] = None) -> ListenResult:
        """Stream the utterance chunk by chunk and read the state head after every chunk."""
        model = self.model
        if not isinstance(model, SpokenDialogModel):
            raise ValueError("listening needs a stage-3 (spoken_dialog) model")
        feats, _ = model._extract_feats(*self._batch(wav))
        if model.normalize is not None:
            feats, _ = model.normalize(feats, torch.tensor([feats.size(1)], device=self.device))
        llm = model.llm
        prefix = llm.embed_tokens(self._ids(self.template.prefix_ids(history)))
        before = model.before_audio(1, self.device).to(prefix.dtype)
        cache = llm.prefill(torch.cat([prefix, before], dim=1)).past_key_values

        enc_state = model.encoder.init_streaming_state(1)
        conv_cache = model.adapter.init_cache(1)
        step = model.encoder.chunk_frames
        per = model.embeddings_per_chunk
        states: List[int] = []
        emitted = 0  # LLM audio embeddings so far; chunk c ends at embedding (c + 1) * per - 1
        total = feats.size(1)
        for start in range(0, total, step):
            is_final = start + step >= total
            enc, enc_state = model.encoder.forward_chunk(feats[:, start:start + step], enc_state,
                                                         is_final=is_final)
            if enc.size(1) == 0:
                continue
            emb, conv_cache = model.adapter.forward_chunk(enc, conv_cache)
            if emb.size(1) == 0:
                continue
            out = llm.extend(emb, cache)
            cache = out.past_key_values
            # One call may carry several chunks (the final flush does): read every chunk end,
            # and the last position of a final partial chunk.
            ends = [j for j in range(emb.size(1)) if (emitted + j + 1) % per == 0]
            if is_final and (emitted + emb.size(1)) % per != 0:
                ends.append(emb.size(1) - 1)
            emitted += emb.size(1)
            logits = model.state_logits(out.hidden[0, ends])
            states.extend(int(s) for s in logits.argmax(-1))
        decision, when = STATE_LISTEN, None
        lookahead = self.chunk_lookahead_samples / self.sample_rate
        for i, s in enumerate(states):
            if s != STATE_LISTEN:
                decision, when = s, min((i + 1) * model.chunk_seconds + lookahead,
                                        len(wav) / self.sample_rate)
                break
        return ListenResult(states, model.chunk_seconds, decision, when)
