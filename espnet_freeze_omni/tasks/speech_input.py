"""SpeechInputTask: the three Freeze-Omni speech-input training stages on espnet2.

    --model ctc            stage 1: StreamingChunkEncoder + CTC on ASR data
    --model llm_asr        stage 2: + ConvAdapter into the frozen LLM, target = transcript
    --model spoken_dialog  stage 3: + prompt embeddings and the state head, target = answer

Frontend, SpecAug, normalization, CTC, the Trainer, resume, averaging and distributed
training are espnet's own. The frozen LLM is named by `--llm_conf path=<dir>` and is never
saved in checkpoints.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable, Collection, Dict, List, Tuple

import numpy as np
import torch
from typeguard import typechecked

from espnet2.asr.ctc import CTC
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.tasks.abs_task import AbsTask
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.tasks.asr import frontend_choices as asr_frontend_choices
from espnet2.tasks.asr import normalize_choices, specaug_choices
from espnet2.text.phoneme_tokenizer import g2p_choices
from espnet2.torch_utils.initialize import initialize
from espnet2.train.class_choices import ClassChoices
from espnet2.train.collate_fn import CommonCollateFn
from espnet2.utils.get_default_kwargs import get_default_kwargs
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import int_or_none, str2bool, str_or_none

from espnet_freeze_omni.adapter import AbsAdapter, ConvAdapter
from espnet_freeze_omni.data.audio import check_sound_scp, parse_sample_rate
from espnet_freeze_omni.data.kaldi_table import check_data_tables
from espnet_freeze_omni.data.speech_input_preprocessor import SpeechInputPreprocessor
from espnet_freeze_omni.encoder import StreamingChunkEncoder
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM
from espnet_freeze_omni.release.kaldi_fbank import KaldiFbankFrontend
from espnet_freeze_omni.models.speech_input import (
    EncoderCTCModel,
    LLMASRModel,
    SpokenDialogModel,
)
from espnet_freeze_omni.tasks.init_param_check import check_init_param
from espnet_freeze_omni.tasks.resumable_trainer import ResumableTrainer

encoder_choices = ClassChoices(
    "encoder",
    classes=dict(streaming_chunk=StreamingChunkEncoder),
    type_check=AbsEncoder,
    default="streaming_chunk",
)
adapter_choices = ClassChoices(
    "speech_adapter",
    classes=dict(conv=ConvAdapter),
    type_check=AbsAdapter,
    default="conv",
)
model_choices = ClassChoices(
    "model",
    classes=dict(ctc=EncoderCTCModel, llm_asr=LLMASRModel, spoken_dialog=SpokenDialogModel),
    type_check=EncoderCTCModel,
    default="ctc",
)
# espnet's ASR frontends, plus the authors' release's Kaldi fbank (imported checkpoints)
frontend_choices = ClassChoices(
    "frontend",
    classes=dict(asr_frontend_choices.classes, kaldi_fbank=KaldiFbankFrontend),
    type_check=AbsFrontend,
    default="default",
)
preprocessor_choices = ClassChoices(
    "preprocessor",
    classes=dict(speech_input=SpeechInputPreprocessor),
    type_check=SpeechInputPreprocessor,
    default="speech_input",
)


class SpeechInputTask(AbsTask):
    num_optimizers: int = 1

    class_choices_list = [
        frontend_choices,
        specaug_choices,
        normalize_choices,
        encoder_choices,
        adapter_choices,
        model_choices,
        preprocessor_choices,
    ]

    trainer = ResumableTrainer  # kill-safe checkpoints (tasks/resumable_trainer.py)

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser):
        group = parser.add_argument_group(description="Task related")
        required = parser.get_default("required")
        required += ["token_list"]
        group.add_argument("--token_list", type=str_or_none, default=None,
                           help="CTC token list (one token per line)")
        group.add_argument("--init", type=lambda x: str_or_none(x.lower()), default=None,
                           choices=["xavier_uniform", "xavier_normal", "kaiming_uniform",
                                    "kaiming_normal", None],
                           help="Initialization method of the trainable modules")
        group.add_argument("--input_size", type=int_or_none, default=None,
                           help="Feature dimension when features are dumped (no frontend)")
        group.add_argument("--ctc_conf", action=NestedDictAction, default=get_default_kwargs(CTC),
                           help="Keyword arguments of espnet's CTC")
        group.add_argument("--llm_conf", action=NestedDictAction,
                           default=dict(path=None, dtype="float32"),
                           help="The frozen LLM: path=<local Hugging Face dir>, dtype=float32|"
                                "bfloat16|float16. Needed by --model llm_asr / spoken_dialog")
        group.add_argument("--check_audio", type=str2bool, default=True,
                           help="Check every training/validation wav (readable, non-empty, "
                                "sample rate) before the model is built")

        group = parser.add_argument_group(description="Preprocess related")
        group.add_argument("--use_preprocessor", type=str2bool, default=True)
        group.add_argument("--token_type", type=str, default="char",
                           choices=["bpe", "char", "word", "phn"])
        group.add_argument("--bpemodel", type=str_or_none, default=None)
        group.add_argument("--non_linguistic_symbols", type=str_or_none, default=None)
        group.add_argument("--cleaner", type=str_or_none, default=None,
                           choices=[None, "tacotron", "jaconv", "vietnamese"])
        group.add_argument("--g2p", type=str_or_none, choices=g2p_choices, default=None)

        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable[
        [Collection[Tuple[str, Dict[str, np.ndarray]]]],
        Tuple[List[str], Dict[str, torch.Tensor]],
    ]:
        return CommonCollateFn(float_pad_value=0.0, int_pad_value=-1)

    @classmethod
    def build_preprocess_fn(cls, args: argparse.Namespace, train: bool):
        if not args.use_preprocessor:
            return None
        preprocessor_class = preprocessor_choices.get_class(
            getattr(args, "preprocessor", None) or "speech_input")
        needs_llm = model_choices.get_class(args.model).needs_llm
        llm_path = args.llm_conf.get("path") if needs_llm else None
        return preprocessor_class(
            train=train,
            llm_path=llm_path,
            asr_instruction=(getattr(args, "model_conf", None) or {}).get("asr_instruction"),
            token_type=args.token_type,
            token_list=args.token_list,
            bpemodel=args.bpemodel,
            non_linguistic_symbols=args.non_linguistic_symbols,
            text_cleaner=args.cleaner,
            g2p_type=args.g2p,
            **(getattr(args, "preprocessor_conf", None) or {}),
        )

    @classmethod
    def required_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return ("speech",)

    @classmethod
    def optional_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return ("text", "answer", "history", "turn_info")

    @classmethod
    def main_worker(cls, args: argparse.Namespace):
        check_data_tables(list(args.train_data_path_and_name_and_type or [])
                          + list(args.valid_data_path_and_name_and_type or []))
        if getattr(args, "check_audio", False):
            cls.check_audio(args)
        super().main_worker(args)

    @classmethod
    def build_optimizers(cls, args: argparse.Namespace, model: torch.nn.Module):
        # espnet calls this between building the model and applying --init_param
        check_init_param(model, args)
        return super().build_optimizers(args, model)

    @classmethod
    def check_audio(cls, args: argparse.Namespace) -> None:
        """Fail before training when any listed wav is unreadable, empty or mis-sampled."""
        fs = (args.frontend_conf or {}).get("fs") if args.frontend else None
        fs = parse_sample_rate(fs) if fs is not None else None
        entries = list(args.train_data_path_and_name_and_type or [])
        entries += list(args.valid_data_path_and_name_and_type or [])
        problems = []
        for path in dict.fromkeys(p for p, name, type_ in entries  # a file listed twice: once
                                  if type_ == "sound" and name == "speech"):
            problems += check_sound_scp(path, fs)
        if problems:
            listing = "\n".join(f"  {p}" for p in problems[:50])
            more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
            raise RuntimeError(
                f"{len(problems)} audio problem(s) found before training; fix the data dir "
                f"(e.g. python -m espnet_freeze_omni.bin.fix_data_dir) or the audio:\n{listing}{more}"
            )

    @classmethod
    @typechecked
    def build_model(cls, args: argparse.Namespace) -> EncoderCTCModel:
        if isinstance(args.token_list, str):
            with open(args.token_list, encoding="utf-8") as f:
                token_list = [line.rstrip() for line in f]
            args.token_list = list(token_list)
        elif isinstance(args.token_list, (tuple, list)):
            token_list = list(args.token_list)
        else:
            raise RuntimeError("--token_list is required (the CTC vocabulary)")
        vocab_size = len(token_list)
        logging.info(f"CTC vocabulary size: {vocab_size}")

        # The LLM first: a wrong path or a non-causal-LM folder fails before anything else.
        llm = None
        if model_choices.get_class(args.model).needs_llm:
            if not args.llm_conf.get("path"):
                raise ValueError(f"--model {args.model} needs --llm_conf path=<local LLM dir>")
            llm = FrozenLLM(args.llm_conf["path"], dtype=args.llm_conf.get("dtype", "float32"))

        if args.input_size is None:
            frontend = frontend_choices.get_class(args.frontend)(**args.frontend_conf)
            input_size = frontend.output_size()
        else:
            args.frontend, args.frontend_conf, frontend = None, {}, None
            input_size = args.input_size
        specaug = (specaug_choices.get_class(args.specaug)(**args.specaug_conf)
                   if args.specaug is not None else None)
        # collect-stats is what produces GlobalMVN's stats file: no normalization yet
        normalize = None
        if args.normalize is not None and not getattr(args, "collect_stats", False):
            normalize = normalize_choices.get_class(args.normalize)(**args.normalize_conf)
        encoder = encoder_choices.get_class(args.encoder)(input_size=input_size, **args.encoder_conf)
        ctc = CTC(odim=vocab_size, encoder_output_size=encoder.output_size(), **args.ctc_conf)

        model_class = model_choices.get_class(args.model)
        common = dict(vocab_size=vocab_size, token_list=token_list, frontend=frontend,
                      specaug=specaug, normalize=normalize, encoder=encoder, ctc=ctc)
        if llm is None:
            model = model_class(**common, **args.model_conf)
        else:
            adapter_conf = dict(args.speech_adapter_conf)
            wanted = adapter_conf.pop("llm_embed_dim", None)
            if wanted is not None and wanted != llm.hidden_size:
                raise ValueError(
                    f"speech_adapter_conf llm_embed_dim={wanted} does not match the hidden size "
                    f"{llm.hidden_size} of the LLM at {llm.path}"
                )
            adapter = adapter_choices.get_class(args.speech_adapter)(
                enc_out_dim=encoder.output_size(), llm_embed_dim=llm.hidden_size, **adapter_conf)
            model = model_class(**common, adapter=adapter, llm=llm, **args.model_conf)

        if args.init is not None:
            initialize(model, args.init)  # the LLM is not a submodule: it stays untouched
        return model
