"""Convert the authors' released Freeze-Omni checkpoints into our packed model.

    release_dir/
        audiollm/train.yaml, audiollm/global_cmvn, audiollm/final.pt   speech input
        decoder/model.json, decoder/final.pt                           speech decoder
        codec/model.json, codec/final.pt                               TiCodec
        server.json                                                    optional
    + the LLM folder (Qwen2-7B-Instruct) -> a zip in the format of recipe stage 17, loaded by
    Speech2Speech.from_pretrained(zip, llm_path=...), its session and bin/speech2speech.

What is converted (keymap.py has the names):
  * encoder, adapter, task/prompt embeddings and the state head `predictor_head`: renamed,
    shapes checked against the model our config builds; the encoder runs with
    `position_mode: release` and, when the checkpoint has `enc.1.embed.*`,
    `input_layer: linear`; features are `frontend: kaldi_fbank`; sessions decide turns
    with the release's thresholds (`model_conf: state_rule: release`).
  * global CMVN: the checkpoint's `encoder.global_cmvn.{mean,istd}` buffers (else the
    `global_cmvn` file, JSON or Kaldi text) become `normalize.{mean,std}` and the
    global_mvn stats npz (count 1, sum = mean, sum_square = mean^2 + 1/istd^2).
  * speech decoder: same names under `speech_decoder.`; `num_pre_layers = num_blocks // 2`,
    `use_prefix = kv_cache_prefix_finetune != 0`.
  * dropped: `llm_decoder.*` (the LLM comes from --llm_path), saved RoPE `inv_freq`
    (checked to be theta 1e4 first).
  * synthesized (the release has none): our CTC head `ctc.ctc_lo` over a 3-token list
    (<blank> <unk> <sos/eos>), all zeros. CTC outputs of an imported model are meaningless
    (every frame is blank, so CTC transcripts are empty); nothing else reads the CTC head.
  * the codec (without `codec_dir`): TiCodec's `generator.*` (weight_norm folded into plain
    weights, w = g * v / ||v||) and the quantizer's local + global codebooks become our
    `ticodec` codec (codec/ticodec.py), packed as codec/config.yaml + codec/ticodec.pth with
    the model.json's fixed `global_tokens`. Its `encoder.*` (Encoder with GroupNorms,
    GlobalTokenEncoder with its BatchNorm running statistics) is converted the same way
    (weight_norm folded), so the codec also encodes; the Encoder's `linear.0.*`, which its
    forward never calls, is dropped. With `codec_dir`, one of our codecs is
    packed instead (its vocabulary must equal the decoder's).

Every tensor of a release checkpoint must land in exactly one place: an unknown key, a key
our model lacks, or a tensor our model needs that the release lacks is a ReleaseImportError
naming the file and the key; a shape mismatch names the file, the tensor and both shapes.
Variants we do not implement are refused naming the setting or the key.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from espnet_freeze_omni.release.keymap import (
    CMVN_KEYS, DROP, ROPE_KEY, audio_llm_source, audio_llm_target, codec_source, codec_target,
    decoder_target)

CTC_TOKENS = ["<blank>", "<unk>", "<sos/eos>"]
NUM_STATE_LOGITS = 4
RELEASE_FILES = {
    "train_yaml": "audiollm/train.yaml",
    "cmvn": "audiollm/global_cmvn",
    "audio_llm": "audiollm/final.pt",
    "decoder_json": "decoder/model.json",
    "decoder": "decoder/final.pt",
    "codec_json": "codec/model.json",
    "codec": "codec/final.pt",
    "server_json": "server.json",
}


class ReleaseImportError(ValueError):
    """The release dir cannot be converted; the message names the file and the key."""


# ---------------------------------------------------------------------------- reading
def _norm_keys(conf: Dict[str, Any]) -> Dict[str, Any]:
    """The release reads its hyphenated keys with '-' turned into '_'."""
    return {str(k).replace("-", "_"): v for k, v in (conf or {}).items()}


def _load_state(path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise ReleaseImportError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint
        raise ReleaseImportError(f"{path}: cannot be read as a torch checkpoint ({e})") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ReleaseImportError(f"{path}: not a state_dict (or {{'model': state_dict}})")
    return state


def read_cmvn_file(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, istd) of a release `global_cmvn` file, JSON {mean_stat, var_stat, frame_num}
    or Kaldi text stats ([ sums count \\n squares 0 ]); istd = 1 / sqrt(max(var, 1e-20))."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        stats = json.loads(text)
        try:
            sums = np.asarray(stats["mean_stat"], dtype=np.float64)
            squares = np.asarray(stats["var_stat"], dtype=np.float64)
            count = float(stats["frame_num"])
        except KeyError as e:
            raise ReleaseImportError(f"{path}: JSON CMVN stats lack {e.args[0]!r}") from None
    else:
        if text.startswith("\0B"):
            raise ReleaseImportError(f"{path}: binary Kaldi stats; write them as text "
                                     "(compute-cmvn-stats --binary=false)")
        words = text.split()
        if len(words) < 6 or words[0] != "[" or words[-1] != "]" or words[-2] not in ("0", "0.0"):
            raise ReleaseImportError(f"{path}: neither JSON nor Kaldi text CMVN stats")
        dim = (len(words) - 4) // 2
        values = np.asarray(words[1:-1], dtype=np.float64)
        sums, count, squares = values[:dim], values[dim], values[dim + 1: 2 * dim + 1]
    mean = sums / count
    var = np.maximum(squares / count - mean * mean, 1e-20)
    return mean, 1.0 / np.sqrt(var)


def write_stats(path: Path, mean: np.ndarray, istd: np.ndarray) -> None:
    """espnet global_mvn stats giving exactly `mean` and std = 1 / istd."""
    mean = np.asarray(mean, dtype=np.float64)
    std = 1.0 / np.asarray(istd, dtype=np.float64)
    np.savez(path, count=np.array(1.0), sum=mean, sum_square=mean * mean + std * std)


def llm_hidden_size(llm_path: Path) -> int:
    config = Path(llm_path) / "config.json"
    if not config.is_file():
        raise ReleaseImportError(f"{config}: not found (--llm_path must be a Hugging Face "
                                 "model folder)")
    conf = json.loads(config.read_text())
    hidden = conf.get("hidden_size") or (conf.get("text_config") or {}).get("hidden_size")
    if not hidden:
        raise ReleaseImportError(f"{config}: no hidden_size")
    return int(hidden)


# ---------------------------------------------------------------------------- configs
def speech_input_config(train_yaml: Path, state: Dict[str, torch.Tensor],
                        llm_hidden: int) -> Dict[str, Any]:
    """Our speech-input training config (the parts that differ from the Task defaults)
    from the release's train.yaml, sizes from tensor shapes where it is silent.
    Refuses (ReleaseImportError naming the setting or key) what we do not implement."""
    import yaml

    if not train_yaml.is_file():
        raise ReleaseImportError(f"{train_yaml}: file not found")
    conf = yaml.safe_load(train_yaml.read_text(encoding="utf-8")) or {}
    where = str(train_yaml)
    enc = conf.get("encoder_conf") or {}
    overview = _norm_keys(enc.get("overview_conf"))
    para = enc.get("para_conf") or {}
    layers = str(overview.get("encoder_layer_config", "tdnn-dtc"))
    if layers != "subsampling-transformer":
        raise ReleaseImportError(f"{where}: encoder_conf.overview_conf.encoder-layer-config is "
                                 f"{layers!r}; only 'subsampling-transformer' is implemented")
    sub = _norm_keys(para.get("subsampling"))
    tr = _norm_keys(para.get("transformer"))
    model = _norm_keys(conf.get("model_conf"))

    def refuse(setting: str, value, wanted: str):
        raise ReleaseImportError(f"{where}: {setting} = {value!r} is not implemented "
                                 f"(only {wanted})")

    # the release's argparse defaults where the yaml is silent
    if int(sub.get("subsampling_rate", 4)) != 4:
        refuse("subsampling-rate", sub.get("subsampling_rate"), "4")
    if tr.get("transformer_pos_enc_class", "abs-enc") != "rel-enc":
        refuse("transformer-pos-enc-class", tr.get("transformer_pos_enc_class", "abs-enc"),
               "'rel-enc'")
    if not _truthy(tr.get("transformer_normalize_before", True)):
        refuse("transformer-normalize-before", tr.get("transformer_normalize_before"), "true")
    if _truthy(tr.get("transformer_concat_after", False)):
        refuse("transformer-concat-after", tr.get("transformer_concat_after"), "false")
    if tr.get("transformer_positionwise_layer_type", "linear") != "linear":
        refuse("transformer-positionwise-layer-type",
               tr.get("transformer_positionwise_layer_type"), "'linear'")
    input_layer = tr.get("transformer_input_layer")
    has_embed = "encoder.enc.1.embed.0.weight" in state
    if input_layer is None:
        input_layer = "linear" if has_embed else "none"
    if input_layer not in ("linear", "none"):
        refuse("transformer-input-layer", input_layer, "'linear' or 'none'")
    chunk = int(tr.get("transformer_chunk_size", -1))
    left = int(tr.get("transformer_left_chunks", -1))
    if chunk <= 0:
        refuse("transformer-chunk_size", chunk, "a streaming chunk > 0")

    d = int(tr.get("transformer_attention_dim", 256))
    for name, value in (("subsampling-output-dim", sub.get("subsampling_output_dim", 256)),
                        ("transformer-input-dim", tr.get("transformer_input_dim", 256)),
                        ("transformer-output-dim", tr.get("transformer_output_dim", 4))):
        if int(value) != d:
            raise ReleaseImportError(f"{where}: {name} = {value} differs from "
                                     f"transformer-attention-dim {d} (not implemented)")
    input_dim = int(conf.get("input_dim", sub.get("subsampling_input_dim", 80)))

    if model.get("adpter_type", "cnn") != "subsampling":
        refuse("model_conf.adpter_type", model.get("adpter_type", "cnn"), "'subsampling'")
    llm_embed = int(model.get("llm_embed_dim", 4096))
    enc_out = int(model.get("enc_out_dim", 512))
    if enc_out != d:
        raise ReleaseImportError(f"{where}: model_conf.enc_out_dim = {enc_out} differs from the "
                                 f"encoder's transformer-attention-dim {d}")
    if 4 * enc_out < llm_embed:
        raise ReleaseImportError(
            f"{where}: 4 * enc_out_dim ({4 * enc_out}) < llm_embed_dim ({llm_embed}) selects the "
            "release's two-conv adapter (adpter.conv1d1), which is not implemented")
    if "adpter.bn2.running_mean" in state or model.get("norm", "batch") != "layer":
        raise ReleaseImportError(
            f"{where}: the adapter uses BatchNorm (model_conf.norm = "
            f"{model.get('norm', 'batch')!r}, key adpter.bn2.running_mean "
            f"{'present' if 'adpter.bn2.running_mean' in state else 'absent'}); only "
            "norm: layer is implemented")
    if model.get("activation_func", "relu") != "gelu":
        refuse("model_conf.activation_func", model.get("activation_func", "relu"), "'gelu'")
    if llm_embed != llm_hidden:
        raise ReleaseImportError(
            f"{where}: model_conf.llm_embed_dim = {llm_embed} but the LLM at --llm_path has "
            f"hidden size {llm_hidden}: the release was made for another LLM")
    if model.get("task_type", "prompt") != "prompt":
        refuse("model_conf.task_type", model.get("task_type"), "'prompt'")
    for flag in ("prefix_finetune", "use_lora"):
        if _truthy(model.get(flag, False)):
            refuse(f"model_conf.{flag}", model.get(flag), "false")
    if float(model.get("add_ctc_prompt_ratio", 0.0)) > 0:
        refuse("model_conf.add_ctc_prompt_ratio", model.get("add_ctc_prompt_ratio"), "0")
    if not _truthy(model.get("prompt_finetune", False)):
        refuse("model_conf.prompt_finetune", model.get("prompt_finetune", False),
               "true (the prompt embeddings before the audio)")
    if int(model.get("predict_usr_state", 0)) != NUM_STATE_LOGITS:
        refuse("model_conf.predict_usr_state", model.get("predict_usr_state", 0),
               str(NUM_STATE_LOGITS))

    def rows(key: str) -> int:
        if key not in state:
            raise ReleaseImportError(f"{train_yaml.parent / 'final.pt'}: missing {key}")
        return int(state[key].shape[0])

    conv = state.get("adpter.conv1d2.weight")
    kernel = int(conv.shape[-1]) if conv is not None and conv.dim() == 3 else 3
    return {
        "model": "spoken_dialog",
        "model_conf": {"prompt_num": rows("prompt_embeddings.weight"),
                       "task_num": rows("task_embeddings.weight"),
                       "state_rule": "release"},
        "frontend": "kaldi_fbank",
        "frontend_conf": {"fs": 16000, "n_mels": input_dim, "stream_alignment": "release"},
        "specaug": None,
        "normalize": "global_mvn",
        "encoder": "streaming_chunk",
        "encoder_conf": {
            "output_size": d,
            "attention_heads": int(tr.get("transformer_attention_heads", 4)),
            "linear_units": int(tr.get("transformer_linear_units", 1024)),
            "num_blocks": int(tr.get("transformer_num_blocks", 6)),
            "dropout_rate": float(tr.get("transformer_dropout_rate", 0.1)),
            "positional_dropout_rate": float(tr.get("transformer_positional_dropout_rate", 0.1)),
            "attention_dropout_rate": float(tr.get("transformer_attention_dropout_rate", 0.0)),
            "chunk_size": chunk,
            "left_chunks": left,
            "position_mode": "release",
            "input_layer": input_layer,
        },
        "speech_adapter": "conv",
        # the kernel from the tensor when the yaml is silent (the release's default is 3)
        "speech_adapter_conf": {"kernel_size": int(model.get("kernel_size", kernel)),
                                "num_layers": 1},
        "ctc_conf": {"dropout_rate": 0.0},
        "token_type": "char",
        "token_list": list(CTC_TOKENS),
    }


def speech_output_config(model_json: Path, llm_hidden: int) -> Dict[str, Any]:
    """Our speech-output config from the release's decoder/model.json [idim, odim, args]."""
    if not model_json.is_file():
        raise ReleaseImportError(f"{model_json}: file not found")
    try:
        idim, odim, args = json.loads(model_json.read_text(encoding="utf-8"))
    except (ValueError, TypeError) as e:
        raise ReleaseImportError(f"{model_json}: not a JSON [idim, odim, args] ({e})") from None
    args = _norm_keys(args)
    hidden = int(args.get("transformer_attention_dim", 256))
    for name, value in (("idim", args.get("idim", idim)),
                        ("encoder_output_dim", args.get("encoder_output_dim", hidden))):
        if int(value) != hidden:
            raise ReleaseImportError(f"{model_json}: {name} = {value} differs from "
                                     f"transformer_attention_dim {hidden} (not implemented)")
    if llm_hidden % hidden:
        raise ReleaseImportError(f"{model_json}: the LLM hidden size {llm_hidden} is not a "
                                 f"multiple of the decoder's {hidden}")
    blocks = int(args.get("transformer_num_blocks", 6))
    return {
        "model": "freeze_omni",
        # the release re-tokenizes the cleaned-up answer text (RELEASE.md difference 7)
        "model_conf": {"decoder_text_norm": "release"},
        "speech_decoder": "llama_nar_ar",
        "speech_decoder_conf": {
            "vocab_size": int(args.get("odim", odim)),
            "hidden_size": hidden,
            "num_heads": int(args.get("transformer_attention_heads", 4)),
            "intermediate_size": int(args.get("transformer_linear_units", 1024)),
            "num_layers": blocks,
            "num_pre_layers": blocks // 2,
            "use_prefix": int(args.get("kv_cache_prefix_finetune", 0)) != 0,
            "dropout_rate": float(args.get("transformer_dropout_rate", 0.1)),
            "input_dropout_rate": 0.0,
            "restart_codec_positions": False,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
        },
    }


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "t")
    return bool(value)


# ---------------------------------------------------------------------------- tensors
def _rename(state: Dict[str, torch.Tensor], source: Path, target_of
            ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Every key of `state` renamed by `target_of` (DROP: dropped; None: unknown, an error
    naming `source` and the keys); returns (renamed tensors, dropped keys)."""
    out: Dict[str, torch.Tensor] = {}
    dropped, unknown = [], []
    for key, value in state.items():
        target = target_of(key)
        if target is None:
            unknown.append(key)
        elif target == DROP:
            dropped.append(key)
        else:
            out[target] = value
    if unknown:
        raise ReleaseImportError(f"{source}: unused key(s) we do not know where to put: "
                                 f"{', '.join(sorted(unknown)[:20])}")
    return out, dropped


def convert_audio_llm(state: Dict[str, torch.Tensor], source: Path
                      ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Renamed tensors for the speech-input model, and the dropped keys. Unknown keys are
    errors; the CMVN buffers are left to the caller."""
    return _rename({k: v for k, v in state.items() if k not in CMVN_KEYS}, source,
                   audio_llm_target)


def convert_decoder(state: Dict[str, torch.Tensor], source: Path, rope_theta: float = 1e4
                    ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Renamed tensors for the speech-output model, and the dropped keys: saved RoPE
    frequencies (checked to be theta `rope_theta` first). Unknown keys are errors."""
    rope = [key for key in state if ROPE_KEY.fullmatch(key)]
    for key in rope:
        dim = 2 * state[key].numel()
        expected = 1.0 / rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        if not torch.allclose(state[key].double(), expected, rtol=1e-3):
            raise ReleaseImportError(f"{source}: {key} is not RoPE with theta {rope_theta}")
    out, dropped = _rename({k: v for k, v in state.items() if k not in rope}, source,
                           decoder_target)
    return out, rope + dropped


def load_into(model: torch.nn.Module, converted: Dict[str, torch.Tensor], source: Path,
              synthesized: Dict[str, torch.Tensor], own: Tuple[str, ...] = (),
              source_name=lambda key: key) -> None:
    """Strictly load `converted` (+ `synthesized`, + the model's own `own` buffers) into
    `model`; any key or shape mismatch is a ReleaseImportError naming `source`."""
    target = model.state_dict()
    for key, value in converted.items():
        if key not in target:
            raise ReleaseImportError(f"{source}: unused key {source_name(key)} (our model, as "
                                     f"the config builds it, has no {key})")
        if tuple(value.shape) != tuple(target[key].shape):
            raise ReleaseImportError(
                f"{source}: tensor {source_name(key)} has shape {tuple(value.shape)}, our "
                f"{key} needs {tuple(target[key].shape)}")
    full = dict(converted)
    full.update(synthesized)
    missing = [k for k in target if k not in full and k not in own]
    if missing:
        raise ReleaseImportError(
            f"{source}: missing key(s) " + ", ".join(
                f"{source_name(k)} (for our {k})" for k in missing[:20]))
    for key in own:
        full[key] = target[key]
    model.load_state_dict(full, strict=True)


# training-only entries a TiCodec checkpoint may carry beside the three models
CODEC_TRAINING_ENTRIES = ("mpd", "msd", "optim_g", "optim_d", "steps", "epoch")
CODEC_GROUPS = ("generator", "quantizer", "encoder")


def convert_codec(model_json: Path, checkpoint: Path):
    """(TiCodecConfig, our TiCodecModel state_dict, dropped keys, dropped entries) of the
    release's codec/{model.json, final.pt}. Refusals name the file and the key/tensor.
    With an `encoder` entry the config gets model.json's `global_feature_conv` and the model
    its encoder (every tensor but the unused `encoder.linear.0.*`); without one, the
    model only decodes."""
    from espnet_freeze_omni.codec.ticodec import TiCodecConfig, TiCodecModel, fold_weight_norm

    if not model_json.is_file():
        raise ReleaseImportError(f"{model_json}: file not found")
    if not checkpoint.is_file():
        raise ReleaseImportError(f"{checkpoint}: file not found")
    try:
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint
        raise ReleaseImportError(f"{checkpoint}: cannot be read as a torch checkpoint ({e})") from e
    if not isinstance(raw, dict):
        raise ReleaseImportError(f"{checkpoint}: not a dict of {', '.join(CODEC_GROUPS)} "
                                 "state_dicts")
    flat: Dict[str, torch.Tensor] = {}
    dropped_entries = []
    for group, value in raw.items():
        if group in CODEC_GROUPS:
            if not isinstance(value, dict) or not all(torch.is_tensor(v) for v in value.values()):
                raise ReleaseImportError(f"{checkpoint}: entry {group!r} is not a state_dict")
            flat.update({f"{group}.{k}": v for k, v in value.items()})
        elif group in CODEC_TRAINING_ENTRIES:
            dropped_entries.append(group)
        else:
            raise ReleaseImportError(f"{checkpoint}: unused entry {group!r} (expected "
                                     f"{', '.join(CODEC_GROUPS)})")
    for group in ("generator", "quantizer"):
        if group not in raw:
            raise ReleaseImportError(f"{checkpoint}: missing entry {group!r}")
    try:  # the encoder's global_feature_conv is read (and checked) only when there is one
        conf = TiCodecConfig.from_release_json(model_json, with_encoder="encoder" in raw)
    except ValueError as e:
        raise ReleaseImportError(str(e)) from None

    model = TiCodecModel(conf)
    target = model.state_dict()
    out, dropped = _rename(flat, checkpoint, codec_target)
    # weight-normed layers: their (g, v) pairs are folded into the plain weight below
    pairs: Dict[str, Dict[str, torch.Tensor]] = {}
    for name in [n for n in out if n.endswith(("weight_g", "weight_v"))]:
        pairs.setdefault(name[:-2], {})[name[-1]] = out.pop(name)
    for name, gv in pairs.items():
        for part in "gv":
            if part not in gv:
                raise ReleaseImportError(f"{checkpoint}: missing key {name}_{part} (the pair "
                                         f"of {name}_{'v' if part == 'g' else 'g'})")
        if name in out:
            raise ReleaseImportError(f"{checkpoint}: both {name} and {name}_g/_v")
        if name not in target:
            raise ReleaseImportError(f"{checkpoint}: unused key {name}_v (our model, as "
                                     f"{model_json.name} builds it, has no {name})")
        want = tuple(target[name].shape)
        want_g = (want[0],) + (1,) * (len(want) - 1)
        for part, shape in (("v", want), ("g", want_g)):
            if tuple(gv[part].shape) != shape:
                raise ReleaseImportError(
                    f"{checkpoint}: tensor {name}_{part} has shape {tuple(gv[part].shape)}, "
                    f"our {name} needs {shape}")
        out[name] = fold_weight_norm(gv["g"], gv["v"])
    load_into(model, out, checkpoint, {}, source_name=lambda k: codec_source(k) or k)
    return conf, model.state_dict(), dropped, dropped_entries


# ---------------------------------------------------------------------------- main
def import_release(release_dir, llm_path, out, codec_dir=None, codec_model=None,
                   llm_dtype: str = "float32", work_dir=None) -> Path:
    """Convert `release_dir` (+ the LLM at `llm_path`) into the packed model `out` (a zip).

    `codec_dir`: one of our codec dirs (codec_conf.yaml or config.yaml + checkpoint;
    `codec_model` picks a checkpoint) whose vocabulary equals the decoder's, packed instead
    of the release's codec/ (TiCodec, converted when `codec_dir` is None). Returns `out`.
    """
    from espnet2.main_funcs.pack_funcs import pack

    release_dir, llm_path, out = Path(release_dir), Path(llm_path).absolute(), Path(out).absolute()
    if not release_dir.is_dir():
        raise ReleaseImportError(f"{release_dir}: release dir not found")
    files = {k: release_dir / v for k, v in RELEASE_FILES.items()}
    for key in ("train_yaml", "audio_llm", "decoder_json", "decoder"):
        if not files[key].is_file():
            raise ReleaseImportError(f"{files[key]}: file not found (release layout: "
                                     f"{', '.join(RELEASE_FILES.values())})")
    if codec_dir is None and not (files["codec_json"].is_file() and files["codec"].is_file()):
        raise ReleaseImportError(
            f"{files['codec'].parent}: no release codec ({RELEASE_FILES['codec_json']} and "
            f"{RELEASE_FILES['codec']}) and no codec_dir (--codec_dir) of one of our codecs")
    hidden = llm_hidden_size(llm_path)

    audio_state = _load_state(files["audio_llm"])
    input_conf = speech_input_config(files["train_yaml"], audio_state, hidden)
    converted, dropped = convert_audio_llm(audio_state, files["audio_llm"])
    mean, istd, cmvn_from = _cmvn(audio_state, files)

    decoder_state = _load_state(files["decoder"])
    output_conf = speech_output_config(files["decoder_json"], hidden)
    dec_converted, dec_dropped = convert_decoder(decoder_state, files["decoder"])
    ticodec = None
    if codec_dir is None:
        ticodec = convert_codec(files["codec_json"], files["codec"])
        vocab = output_conf["speech_decoder_conf"]["vocab_size"]
        if ticodec[0].n_codes != vocab:
            raise ReleaseImportError(
                f"{files['codec_json']}: n_codes = {ticodec[0].n_codes}, the release's decoder "
                f"(decoder/model.json odim) predicts {vocab}")
        if ticodec[0].can_encode:
            logging.info("%s: encoder converted; dropped %s (unused by the release's "
                         "Encoder.forward)%s", files["codec"], ", ".join(ticodec[2]) or "nothing",
                         f" and the training-only entries {', '.join(ticodec[3])}"
                         if ticodec[3] else "")
        else:
            logging.warning("%s: no 'encoder' entry: the packed codec only decodes%s",
                            files["codec"], f" (dropped the training-only entries "
                            f"{', '.join(ticodec[3])})" if ticodec[3] else "")
    elif files["codec"].is_file():
        logging.info("%s not converted: packing the codec_dir %s instead", files["codec"],
                     codec_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import_release_", dir=work_dir or out.parent))
    cwd = os.getcwd()
    try:
        (staging / "speech_input").mkdir()
        (staging / "speech_output").mkdir()
        stats = staging / "speech_input" / "feats_stats.npz"
        write_stats(stats, mean, istd)
        llm_conf = {"path": str(llm_path), "dtype": llm_dtype}
        input_model, input_args = _build(
            "speech_input", input_conf, llm_conf, staging, extra={"normalize_conf":
                                                                  {"stats_file": str(stats)}})
        synthesized = {
            "ctc.ctc_lo.weight": torch.zeros(len(CTC_TOKENS), input_conf["encoder_conf"]["output_size"]),
            "ctc.ctc_lo.bias": torch.zeros(len(CTC_TOKENS)),
            "normalize.mean": torch.from_numpy(np.asarray(mean, dtype=np.float64)),
            "normalize.std": torch.from_numpy(1.0 / np.asarray(istd, dtype=np.float64)),
        }
        load_into(input_model, converted, files["audio_llm"], synthesized,
                  own=tuple(k for k in input_model.state_dict() if k == "asr_instruction_ids"),
                  source_name=lambda k: audio_llm_source(k) or k)
        torch.save(input_model.state_dict(), staging / "speech_input" / "model.pth")
        input_args["normalize_conf"]["stats_file"] = "speech_input/feats_stats.npz"
        _dump(input_args, staging / "speech_input" / "config.yaml")

        output_model, output_args = _build("speech_output", output_conf, llm_conf, staging,
                                           llm=input_model.llm)
        load_into(output_model, dec_converted, files["decoder"], {},
                  source_name=lambda k: k.replace("speech_decoder.", "", 1))
        torch.save(output_model.state_dict(), staging / "speech_output" / "model.pth")
        _dump(output_args, staging / "speech_output" / "config.yaml")

        if ticodec is None:
            codec_yaml, codec_weights = _stage_codec(
                codec_dir, codec_model, staging, output_conf["speech_decoder_conf"]["vocab_size"])
            codec_note = f"ours, from {Path(codec_dir).absolute()} (the release's not converted)"
        else:
            from espnet_freeze_omni.codec.ticodec import CONFIG_FILE, WEIGHTS_FILE, TiCodec

            TiCodec(ticodec[0], ticodec[1]).save(
                staging / "codec", provenance={"converted_from": str(files["codec"])})
            codec_yaml, codec_weights = f"codec/{CONFIG_FILE}", f"codec/{WEIGHTS_FILE}"
            codec_note = ("TiCodec, converted (encoding and decoding)" if ticodec[0].can_encode
                          else "TiCodec, converted (decoding only: the checkpoint has no "
                               "encoder)")
        provenance = {
            "release_dir": str(release_dir.absolute()),
            "converted_from": {k: str(v) for k, v in files.items() if v.is_file()},
            "cmvn_from": cmvn_from,
            "dropped": {"audiollm/final.pt": len(dropped), "decoder/final.pt": dec_dropped,
                        **({"codec/final.pt": {"keys": ticodec[2],
                                               "entries": ticodec[3]}} if ticodec else {})},
            "synthesized": {"ctc.ctc_lo": "zeros over <blank> <unk> <sos/eos>: CTC outputs "
                                          "of an imported model are meaningless"},
            "codec": codec_note,
        }
        if files["server_json"].is_file():
            provenance["server_json"] = json.loads(files["server_json"].read_text())
        (staging / "release_import.json").write_text(json.dumps(provenance, indent=2))
        os.chdir(staging)
        pack(files={"speech_input_model": "speech_input/model.pth",
                    "speech_output_model": "speech_output/model.pth",
                    "feats_stats": "speech_input/feats_stats.npz",
                    "codec_model": codec_weights},
             yaml_files={"speech_input_config": "speech_input/config.yaml",
                         "speech_output_config": "speech_output/config.yaml",
                         "codec_config": codec_yaml},
             option=["release_import.json"], outpath=out)
    finally:
        os.chdir(cwd)
        shutil.rmtree(staging, ignore_errors=True)
    logging.info("packed %s from %s (the LLM is not in it: give llm_path when loading)",
                 out, release_dir)
    return out


def _cmvn(state: Dict[str, torch.Tensor], files: Dict[str, Path]):
    """(mean, istd, where from): the checkpoint's buffers, else the global_cmvn file."""
    have = [k in state for k in CMVN_KEYS]
    if all(have):
        mean = state[CMVN_KEYS[0]].double().numpy()
        istd = state[CMVN_KEYS[1]].double().numpy()
        if mean.shape != istd.shape:
            raise ReleaseImportError(f"{files['audio_llm']}: tensor {CMVN_KEYS[1]} has shape "
                                     f"{istd.shape}, {CMVN_KEYS[0]} {mean.shape}")
        if files["cmvn"].is_file():
            f_mean, f_istd = read_cmvn_file(files["cmvn"])
            if f_mean.shape != mean.shape or not (np.allclose(f_mean, mean, rtol=1e-4, atol=1e-4)
                                                  and np.allclose(f_istd, istd, rtol=1e-4)):
                logging.warning("%s differs from the checkpoint's CMVN buffers; using the "
                                "buffers (the release model uses them)", files["cmvn"])
        return mean, istd, f"{files['audio_llm']}: {', '.join(CMVN_KEYS)}"
    if any(have):
        missing = [k for k, h in zip(CMVN_KEYS, have) if not h][0]
        raise ReleaseImportError(f"{files['audio_llm']}: missing key {missing}")
    if not files["cmvn"].is_file():
        raise ReleaseImportError(f"{files['cmvn']}: file not found, and "
                                 f"{files['audio_llm']} has no {CMVN_KEYS[0]}")
    mean, istd = read_cmvn_file(files["cmvn"])
    return mean, istd, str(files["cmvn"])


def _build(kind: str, conf: Dict[str, Any], llm_conf: Dict, staging: Path, extra=None, llm=None):
    """(model, the trainer-style args dict) through the Task's own parser and build_model."""
    import yaml

    if kind == "speech_input":
        from espnet_freeze_omni.tasks.speech_input import SpeechInputTask as task
    else:
        from espnet_freeze_omni.tasks.speech_output import SpeechOutputTask as task
    conf = dict(conf, llm_conf=llm_conf, **(extra or {}))
    path = staging / kind / "release.yaml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False, allow_unicode=True))
    args = task.get_parser().parse_args(["--config", str(path), "--output_dir", str(staging)])
    path.unlink()
    if kind == "speech_input":
        model = task.build_model(args)
    else:
        from espnet_freeze_omni.inference.speech2speech import build_speech_output_model

        model = build_speech_output_model(vars(args), llm)
    args.output_dir = None
    args.config = None
    return model, vars(args)


def _dump(args: Dict[str, Any], path: Path) -> None:
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    with open(path, "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(args, f, indent=4, sort_keys=False)


def _stage_codec(codec_dir, codec_model, staging: Path, vocab: int) -> Tuple[str, str]:
    """Copy our codec's files into the staging dir; check its vocabulary."""
    from espnet_freeze_omni.codec import load_codec
    from espnet_freeze_omni.inference.speech2speech import codec_conf_from_dir, codec_files

    conf = codec_conf_from_dir(codec_dir, codec_model)
    codec = load_codec(conf)
    if codec.vocab_size != vocab:
        raise ReleaseImportError(
            f"{codec_dir}: the codec has {codec.vocab_size} codes, the release's decoder "
            f"(decoder/model.json odim) predicts {vocab}")
    config, weights = codec_files(conf)
    (staging / "codec").mkdir()
    shutil.copy2(config, staging / "codec" / Path(config).name)
    shutil.copy2(weights, staging / "codec" / Path(weights).name)
    return f"codec/{Path(config).name}", f"codec/{Path(weights).name}"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(
        description="Convert the authors' released Freeze-Omni checkpoints into a packed "
                    "model (docs/release_import.md).")
    parser.add_argument("--release_dir", required=True,
                        help="dir with audiollm/{train.yaml,global_cmvn,final.pt}, "
                             "decoder/{model.json,final.pt}, [codec/], [server.json]")
    parser.add_argument("--llm_path", required=True, help="the LLM folder (Qwen2-7B-Instruct)")
    parser.add_argument("--out", required=True, help="the zip to write")
    parser.add_argument("--codec_dir", default=None,
                        help="one of our codec dirs to pack instead of the release's TiCodec "
                             "(default: convert codec/); its vocabulary must be the decoder's")
    parser.add_argument("--codec_model", default=None,
                        help="checkpoint inside a gan_codec --codec_dir (default: its best)")
    parser.add_argument("--llm_dtype", default="bfloat16",
                        choices=["float32", "bfloat16", "float16"],
                        help="dtype recorded for the frozen LLM")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        out = import_release(args.release_dir, args.llm_path, args.out, args.codec_dir,
                             args.codec_model, args.llm_dtype)
    except ReleaseImportError as e:
        raise SystemExit(f"import_release: {e}") from None
    print(f"packed {out} (the frozen LLM is not in it: give --llm_path when loading)")
    return out
