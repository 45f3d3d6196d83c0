"""The whole Freeze-Omni model for inference: a spoken question in, a spoken answer out.

    wav (16 kHz) --stage-3 speech-input model--> LLM input embeddings of the user turn
        --frozen LLM, greedy--> answer tokens + each token's final hidden state
        --TextSegmenter--> segments (SPEC §3) --stage-3 speech decoder--> codec tokens
        --codec, packet by packet--> PCM (24 kHz)

One FrozenLLM instance serves both paths: the speech-input model loads it, and the
speech-output model is built around that same instance, so a 7B LLM is loaded once. The
speech-input model also gives CTC transcripts, transcripts through the LLM and the
streaming state head (`listen`).

    s2s = Speech2Speech.from_files(
        "exp/speech_input_stage3/config.yaml", "exp/speech_input_stage3/valid.loss.best.pth",
        "exp/speech_output_stage3/config.yaml", "exp/speech_output_stage3/valid.loss.best.pth",
        codec_dir="exp/codec", llm_path="/models/Qwen2-7B-Instruct")
    s2s = Speech2Speech.from_pretrained("exp/packed/freeze_omni_model.zip", llm_path=...)
    out = s2s(wav)                        # {"text": answer, "wav": 24 kHz float32}
    answer = s2s.answer(wav, history)     # text, token_ids, hidden_states (one row per token)
    for pcm in s2s.stream_reply(wav):     # packets while the LLM is still generating
        play(pcm)
    session = s2s.session(system_role="...")  # live, duplex: feed audio as it arrives
    for event in session.feed(pcm): ...
"""
from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from espnet_freeze_omni.data.yaml_mapping import read_yaml_mapping
from espnet_freeze_omni.inference.speech_input_inference import (
    ListenResult,
    SpeechInputInference,
    greedy_steps,
    load_trained_state,
    read_train_config,
)
from espnet_freeze_omni.inference.speech_synthesis import SpeechSynthesizer
from espnet_freeze_omni.inference.text_segmenter import TextSegment, TextSegmenter
from espnet_freeze_omni.models.speech_input import SpokenDialogModel

PathLike = Union[str, os.PathLike]
History = Optional[List[Dict[str, str]]]
Step = Tuple[int, torch.Tensor]  # a generated token id and the hidden state that predicted it

# A codec dir's load_codec() config, as recipe stage 11 writes it for either codec type.
CODEC_CONF_FILE = "codec_conf.yaml"
# Without one: checkpoints of an espnet gan_codec experiment dir, in order of preference
# (the best criteria of conf/codec_soundstream_*.yaml, then the last epoch).
CODEC_MODEL_FILES = (
    "valid.mel_loss.best.pth", "train.mel_loss.best.pth",
    "valid.total_count.best.pth", "train.total_count.best.pth", "latest.pth",
)
# keys of a decode config (conf/decode.yaml) that configure Speech2Speech itself
DECODE_KEYS = ("max_new_tokens", "top_k", "guidance_scale", "max_codec_tokens", "seed",
               "min_segment_tokens", "long_segment_tokens", "packet_conf")
# What a packed model holds (scripts/utils/pack_model.py keys).
PACKED_REQUIRED = ("speech_input_config", "speech_input_model",
                   "speech_output_config", "speech_output_model", "codec_config")


@dataclasses.dataclass
class Answer:
    """The frozen LLM's greedy answer to one user turn."""

    text: str
    token_ids: List[int]
    # (len(token_ids), LLM hidden) float32: row i is the final hidden state at the position
    # that predicted token i, the speech decoder's stage-3 prefix for that token
    hidden_states: torch.Tensor


# ---------------------------------------------------------------------------- codec files
def codec_conf_from_files(config_file: PathLike, model_file: Optional[PathLike] = None,
                          device: str = "cpu") -> Dict:
    """`load_codec` config of a trained codec, from its config.yaml (+ checkpoint).

    An embedded codec's config.yaml says `codec: embedded` and has its codebook beside it,
    a TiCodec's `codec: ticodec` (weights: `model_file`, else ticodec.pth beside it);
    anything else is an espnet gan_codec training config, whose checkpoint is `model_file`
    or, when not given, the first of CODEC_MODEL_FILES found beside the config.
    """
    config_file = Path(config_file)
    conf = read_yaml_mapping(config_file, "codec config")
    if conf.get("codec") == "embedded":
        return {"type": "embedded", "path": str(config_file.parent)}
    if conf.get("codec") == "ticodec":  # the release's codec, as import_release saves it
        from espnet_freeze_omni.codec.ticodec import WEIGHTS_FILE

        weights = Path(model_file) if model_file else config_file.parent / WEIGHTS_FILE
        return {"type": "ticodec", "path": str(config_file.parent), "model_file": str(weights),
                "device": device}
    if model_file is None:
        found = [config_file.parent / name for name in CODEC_MODEL_FILES
                 if (config_file.parent / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"no codec checkpoint beside {config_file}: looked for "
                f"{', '.join(CODEC_MODEL_FILES)}")
        model_file = found[0]
    elif not Path(model_file).is_file():
        raise FileNotFoundError(f"codec model file not found: {model_file}")
    return {"type": "espnet_gan_codec", "train_config": str(config_file),
            "model_file": str(model_file), "device": device}


def codec_conf_from_dir(codec_dir: PathLike, model_file: Optional[PathLike] = None,
                        device: str = "cpu") -> Dict:
    """`load_codec` config of a codec dir: its codec_conf.yaml (recipe stage 11) when there
    and no `model_file` is asked for, else from its config.yaml (codec_conf_from_files)."""
    import yaml

    codec_dir = Path(codec_dir)
    if not codec_dir.is_dir():
        raise FileNotFoundError(f"codec dir not found: {codec_dir}")
    if model_file is None and (codec_dir / CODEC_CONF_FILE).is_file():
        with open(codec_dir / CODEC_CONF_FILE, encoding="utf-8") as f:
            conf = yaml.safe_load(f)
        if not isinstance(conf, dict) or "type" not in conf:
            raise ValueError(f"{codec_dir / CODEC_CONF_FILE} is not a load_codec() config")
        if conf["type"] == "espnet_gan_codec":
            conf.setdefault("device", device)
        return conf
    if model_file is not None and not Path(model_file).is_absolute():
        model_file = codec_dir / model_file
    return codec_conf_from_files(codec_dir / "config.yaml", model_file, device)


def codec_files(codec_conf: Dict) -> Tuple[str, str]:
    """(config.yaml, weights) behind a `load_codec` config: what a packed model carries,
    and what codec_conf_from_files turns back into the config."""
    if codec_conf.get("type") == "embedded":
        from espnet_freeze_omni.codec.embedded import CODEBOOK_FILE

        return (str(Path(codec_conf["path"]) / "config.yaml"),
                str(Path(codec_conf["path"]) / CODEBOOK_FILE))
    if codec_conf.get("type") == "espnet_gan_codec":
        return str(codec_conf["train_config"]), str(codec_conf["model_file"])
    if codec_conf.get("type") == "ticodec":
        from espnet_freeze_omni.codec.ticodec import CONFIG_FILE, WEIGHTS_FILE

        path = Path(codec_conf["path"])
        return str(path / CONFIG_FILE), str(codec_conf.get("model_file") or path / WEIGHTS_FILE)
    raise ValueError(f"unknown codec config {codec_conf!r}: type embedded, espnet_gan_codec "
                     "or ticodec")


# ---------------------------------------------------------------------------- packed models
def unpack_model(model_tag_or_zip: PathLike, cachedir: Optional[PathLike] = None) -> Dict[str, str]:
    """Unpack a packed model with espnet_model_zoo (offline for a local zip): {key: path}.

    espnet_model_zoo caches a local zip by its path; a zip packed again at the same path
    is unpacked again instead of serving the old files.
    """
    from espnet_model_zoo.downloader import ModelDownloader, str_to_hash

    downloader = ModelDownloader(cachedir)
    name = str(model_tag_or_zip)
    local = Path(name)
    if local.suffix == ".zip" or local.exists():
        if not local.is_file():
            raise FileNotFoundError(f"packed model not found: {local}")
        zip_timestamp = _zip_meta_timestamp(local)  # also: a zip, with a meta.yaml
        cached_meta = downloader.cachedir / str_to_hash(local.absolute()) / "meta.yaml"
        if cached_meta.is_file() and _meta_timestamp(cached_meta) != zip_timestamp:
            cached_meta.unlink()
    files = downloader.download_and_unpack(name)
    absent = {k: v for k, v in files.items() if isinstance(v, str) and not Path(v).is_file()}
    if absent:  # meta.yaml lists a member the zip does not hold
        raise FileNotFoundError(
            f"{name}: meta.yaml lists files the archive does not hold: "
            + ", ".join(f"{k} ({Path(v).name})" for k, v in absent.items())
            + "; pack it again with scripts/utils/pack_model.py (stage 17)")
    return files


def _meta_timestamp(meta_yaml: Path):
    import yaml

    with open(meta_yaml, encoding="utf-8") as f:
        return (yaml.safe_load(f) or {}).get("timestamp")


def _zip_meta_timestamp(zip_path: Path):
    import yaml

    if not zipfile.is_zipfile(zip_path):
        raise ValueError(f"{zip_path} is not a zip file (a packed model is the zip of "
                         "scripts/utils/pack_model.py, stage 17)")
    with zipfile.ZipFile(zip_path) as archive:
        try:
            return (yaml.safe_load(archive.read("meta.yaml")) or {}).get("timestamp")
        except KeyError:
            raise ValueError(f"{zip_path} has no meta.yaml: not made by espnet's pack") from None


# ---------------------------------------------------------------------------- speech output
def build_speech_output_model(conf: Dict, llm):
    """A SpeechOutputModel from its training config, around an already loaded FrozenLLM.

    SpeechOutputTask.build_model would load a second copy of the LLM; the class choices
    are the task's own.
    """
    from espnet_freeze_omni.tasks.speech_output import model_choices, speech_decoder_choices

    decoder_conf = dict(conf.get("speech_decoder_conf") or {})
    # an explicit llm_hidden_size stays: SpeechOutputModel checks it against the LLM
    decoder_conf.setdefault("llm_hidden_size", llm.hidden_size)
    decoder_class = speech_decoder_choices.get_class(conf.get("speech_decoder") or "llama_nar_ar")
    model_class = model_choices.get_class(conf.get("model") or "freeze_omni")
    return model_class(speech_decoder=decoder_class(**decoder_conf), llm=llm,
                       **(conf.get("model_conf") or {}))


class Speech2Speech:
    """Spoken dialogue with a frozen LLM: listen, answer, speak.

    Args:
        listener: SpeechInputInference over a stage-3 (spoken_dialog) model; its LLM is
            the one frozen LLM of the whole model.
        speech_decoder: the trained SpeechDecoder (stage 3: with the prefix decoder).
        codec: AbsCodec turning codec tokens into PCM (40 Hz tokens, 24 kHz).
        top_k: codec-token sampling (SPEC §2: 2; 1 = greedy).
        guidance_scale: classifier-free guidance of the speech decoder (1 = off; for
            decoders trained with `condition_dropout`).
        max_codec_tokens: bound per text segment (1000 = 25 s).
        packet_conf: PacketDecoder arguments (first_packet, lookahead, packet, overlap).
        seed: seed of codec-token sampling; `reseed(key)` derives one per utterance.
        min_segment_tokens, long_segment_tokens: TextSegmenter rules (4 and 20).
        token_splitter: the speech-output model's `FinerTokenSplitter`, if it has one.
    """

    def __init__(
        self,
        listener: SpeechInputInference,
        speech_decoder,
        codec,
        top_k: int = 2,
        guidance_scale: float = 1.0,
        max_codec_tokens: int = 1000,
        packet_conf: Optional[Dict] = None,
        seed: int = 0,
        min_segment_tokens: int = 4,
        long_segment_tokens: int = 20,
        token_splitter=None,
    ):
        if not isinstance(listener.model, SpokenDialogModel):
            raise ValueError(
                f"Speech2Speech needs a stage-3 speech-input model (model: spoken_dialog), "
                f"got {type(listener.model).__name__}")
        if speech_decoder.vocab_size != codec.vocab_size:
            raise ValueError(
                f"the speech decoder predicts {speech_decoder.vocab_size} codes but the codec "
                f"has {codec.vocab_size}: they were not trained together")
        self.listener = listener
        self.llm = listener.model.llm
        self.template = listener.template
        self.codec = codec
        self.seed = seed
        self.min_segment_tokens = min_segment_tokens
        self.long_segment_tokens = long_segment_tokens
        speech_decoder.to(listener.device).eval()
        self.synthesizer = SpeechSynthesizer(
            speech_decoder, llm=self.llm, codec=codec, top_k=top_k,
            guidance_scale=guidance_scale, max_tokens=max_codec_tokens,
            packet_conf=packet_conf, seed=seed, token_splitter=token_splitter)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_files(
        cls,
        speech_input_config: Optional[PathLike],
        speech_input_model: PathLike,
        speech_output_config: Optional[PathLike],
        speech_output_model: PathLike,
        codec_conf: Optional[Union[Dict, PathLike]] = None,
        codec_dir: Optional[PathLike] = None,
        llm_path: Optional[PathLike] = None,
        device: str = "cpu",
        decode_conf: Optional[Dict] = None,
        llm_conf: Optional[Dict] = None,
    ) -> "Speech2Speech":
        """Build from the stage-3 training outputs.

        A config left as None is the config.yaml beside its model file. The codec is
        `codec_conf` (a `load_codec` dict or YAML file) or `codec_dir` (see
        codec_conf_from_dir). `llm_path` (or `llm_conf` path=..., dtype=...) replaces the LLM
        recorded in the speech-input config; the speech-output path uses that same LLM.
        `decode_conf` holds max_new_tokens and the constructor's keyword arguments.
        """
        from espnet_freeze_omni.codec import load_codec

        speech_input_config = speech_input_config or Path(speech_input_model).parent / "config.yaml"
        speech_output_config = (speech_output_config
                                or Path(speech_output_model).parent / "config.yaml")
        # every file is checked before the (possibly large) LLM loads
        for role, path in (("speech_input_config", speech_input_config),
                           ("speech_input_model", speech_input_model),
                           ("speech_output_config", speech_output_config),
                           ("speech_output_model", speech_output_model)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{role} not found: {path}")
        if (codec_conf is None) == (codec_dir is None):
            raise ValueError("give exactly one of codec_conf and codec_dir")
        if codec_conf is None:
            codec_conf = codec_conf_from_dir(codec_dir, device=device)
        decode_conf = dict(decode_conf or {})
        max_new_tokens = decode_conf.pop("max_new_tokens", 128)

        llm_conf = dict(llm_conf or {})
        if llm_path is not None:
            llm_conf["path"] = str(llm_path)
        listener = SpeechInputInference.from_files(
            speech_input_config, speech_input_model, device=device, llm_conf=llm_conf,
            max_new_tokens=max_new_tokens)
        llm = listener.model.llm
        output_conf = read_train_config(speech_output_config)
        recorded = (output_conf.get("llm_conf") or {}).get("path")
        same_llm = recorded and Path(recorded).resolve() == Path(llm.path).resolve()
        if recorded and not llm_conf.get("path") and not same_llm:
            logging.warning(
                "%s was trained with the LLM at %s; using the speech-input model's %s for both",
                speech_output_config, recorded, llm.path)
        output_model = build_speech_output_model(output_conf, llm)
        load_trained_state(output_model, speech_output_model, speech_output_config, device)
        codec = load_codec(codec_conf)
        return cls(listener, output_model.speech_decoder, codec,
                   token_splitter=output_model.token_splitter, **decode_conf)

    @classmethod
    def from_pretrained(
        cls,
        model_tag_or_zip: PathLike,
        llm_path: Optional[PathLike] = None,
        device: str = "cpu",
        cachedir: Optional[PathLike] = None,
        **decode_conf,
    ) -> "Speech2Speech":
        """Build from a zip made by scripts/utils/pack_model.py (stage 17), unpacked by
        espnet_model_zoo's ModelDownloader into `cachedir` (default ~/.cache/espnet_model_zoo).

        The LLM is never packed: `llm_path` names it (default: the path recorded at training).
        A packed `decode_config` (the recipe's decode.yaml, stage 17) gives the decoding
        defaults (DECODE_KEYS: LLM tokens, codec sampling, segments, packets), so a server or
        the CLI voices answers as stage 15 did; `decode_conf` keywords override them.
        """
        files = unpack_model(model_tag_or_zip, cachedir)
        missing = [key for key in PACKED_REQUIRED if key not in files]
        if missing:
            raise ValueError(f"{model_tag_or_zip} lacks {missing}: pack it with "
                             "scripts/utils/pack_model.py (stage 17)")
        input_conf = read_train_config(files["speech_input_config"])
        stats = (input_conf.get("normalize_conf") or {}).get("stats_file")
        if input_conf.get("normalize") == "global_mvn" and not (stats and Path(stats).is_file()):
            raise FileNotFoundError(
                f"{model_tag_or_zip} lacks feats_stats, the feature statistics its speech-input "
                f"config normalizes with (normalize_conf.stats_file: {stats}): pack it with "
                "--file feats_stats=<stats dir>/train/feats_stats.npz (stage 17)")
        if llm_path is None:
            recorded = (input_conf.get("llm_conf") or {}).get("path")
            if not recorded or not Path(recorded).is_dir():
                raise FileNotFoundError(
                    f"{model_tag_or_zip} names the frozen LLM {recorded!r}, which is not here "
                    "(the LLM is never packed): pass llm_path=<local LLM folder>")
        codec_conf = codec_conf_from_files(files["codec_config"], files.get("codec_model"), device)
        if "decode_config" in files:
            packed = read_yaml_mapping(files["decode_config"], "packed decode config")
            decode_conf = {**{k: packed[k] for k in DECODE_KEYS if k in packed}, **decode_conf}
        return cls.from_files(
            files["speech_input_config"], files["speech_input_model"],
            files["speech_output_config"], files["speech_output_model"],
            codec_conf=codec_conf, llm_path=llm_path, device=device, decode_conf=decode_conf)

    # ------------------------------------------------------------------ properties
    @property
    def sample_rate(self) -> int:
        """Output sample rate (the codec's, 24 kHz)."""
        return self.codec.sample_rate

    @property
    def input_sample_rate(self) -> int:
        """Input sample rate (the speech-input frontend's, 16 kHz)."""
        return self.listener.sample_rate

    def reseed(self, key: str) -> None:
        """Seed codec-token sampling from `seed` and `key` (an utterance id), so an
        utterance sounds the same whatever else was decoded before it."""
        self.synthesizer.generator.manual_seed(self.seed * 1_000_003 + zlib.crc32(key.encode()))

    # ------------------------------------------------------------------ listening
    def ctc_transcribe(self, wav: np.ndarray) -> str:
        return self.listener.ctc_transcribe(wav)

    def llm_transcribe(self, wav: np.ndarray) -> str:
        return self.listener.llm_transcribe(wav)

    def listen(self, wav: np.ndarray, history: History = None) -> ListenResult:
        """Chunk-by-chunk duplex states of the state head (listen / respond / ignore)."""
        return self.listener.listen(wav, history)

    # ------------------------------------------------------------------ answering
    def answer_steps(self, wav: np.ndarray, history: History = None) -> Iterator[Step]:
        """(token id, hidden state) of the answer to the spoken turn, as generated."""
        return greedy_steps(self.llm, self.listener.spoken_turn_inputs(wav, history),
                            self.listener.max_new_tokens)

    def text_answer_steps(self, question: str, history: History = None) -> Iterator[Step]:
        """(token id, hidden state) of the answer to a text question (the text-in baseline)."""
        prompt = self.template.text_prompt_ids(question, history)
        ids = torch.tensor([prompt], dtype=torch.long, device=self.listener.device)
        return greedy_steps(self.llm, self.llm.embed_tokens(ids), self.listener.max_new_tokens)

    def answer(self, wav: np.ndarray, history: History = None) -> Answer:
        """The frozen LLM's greedy answer to the spoken question, with its hidden states."""
        return self._collect(self.answer_steps(wav, history))

    def answer_text(self, question: str, history: History = None) -> Answer:
        """The frozen LLM's greedy answer to the text question, with its hidden states."""
        return self._collect(self.text_answer_steps(question, history))

    def _collect(self, steps: Iterable[Step]) -> Answer:
        ids, hidden = [], []
        for token, state in steps:
            ids.append(token)
            hidden.append(state)
        states = (torch.stack(hidden) if hidden
                  else torch.zeros(0, self.llm.hidden_size, device=self.listener.device))
        text = self.llm.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return Answer(text=text, token_ids=ids, hidden_states=states)

    # ------------------------------------------------------------------ speaking
    def segments(self, steps: Iterable[Step]) -> Iterator[TextSegment]:
        """Cut streamed (token, hidden) pairs into the segments the speech decoder voices."""
        segmenter = TextSegmenter(self.llm.tokenizer, self.min_segment_tokens,
                                  self.long_segment_tokens)
        for token, state in steps:
            yield from segmenter.push(token, hidden=state)
        last = segmenter.flush()
        if last is not None:
            yield last

    def stream_segments(self, steps: Iterable[Step]) -> Iterator[Tuple[TextSegment, np.ndarray]]:
        """(segment, PCM packet) pairs: each segment is voiced as soon as it is complete."""
        for segment in self.segments(steps):
            for pcm in self.synthesizer.stream(segment.token_ids, segment.hidden_states):
                yield segment, pcm

    def stream(self, token_ids: Sequence[int], hidden_states: torch.Tensor) -> Iterator[np.ndarray]:
        """PCM packets (float32, `sample_rate`) of an answer, segment by segment."""
        if len(token_ids) != len(hidden_states):
            raise ValueError(f"{len(token_ids)} tokens but {len(hidden_states)} hidden states: "
                             "need one hidden state per token")
        for _, pcm in self.stream_segments(zip(token_ids, hidden_states)):
            yield pcm

    def speak(self, token_ids: Sequence[int], hidden_states: torch.Tensor) -> np.ndarray:
        """The whole answer as one waveform at `sample_rate` (empty for an empty answer)."""
        packets = list(self.stream(token_ids, hidden_states))
        return np.concatenate(packets) if packets else np.zeros(0, dtype=np.float32)

    def stream_reply(self, wav: np.ndarray, history: History = None) -> Iterator[np.ndarray]:
        """PCM packets of the answer to the spoken turn while the LLM is still generating:
        the first segment is voiced as soon as its last token is out (SPEC §3)."""
        for _, pcm in self.stream_segments(self.answer_steps(wav, history)):
            yield pcm

    # ------------------------------------------------------------------ live dialogue
    def session(self, system_role: Optional[str] = None, **options):
        """A DuplexSession: audio in as it arrives, turn-taking by the state head, barge-in,
        streamed speech out (inference/duplex_session.py; SessionOptions lists `options`)."""
        from espnet_freeze_omni.inference.duplex_session import DuplexSession

        return DuplexSession(self, system_role=system_role, **options)

    # ------------------------------------------------------------------ whole turn
    def __call__(self, wav: np.ndarray, history: History = None,
                 sample_rate: Optional[int] = None) -> Dict[str, object]:
        """Spoken question -> {"text": answer, "wav": answer at `self.sample_rate`}.

        `wav` is at `input_sample_rate` unless `sample_rate` says otherwise.
        """
        if sample_rate is not None and sample_rate != self.input_sample_rate:
            from espnet_freeze_omni.data.audio import resample

            wav = resample(np.asarray(wav, dtype=np.float32), sample_rate, self.input_sample_rate)
        answer = self.answer(wav, history)
        return {"text": answer.text, "wav": self.speak(answer.token_ids, answer.hidden_states)}
