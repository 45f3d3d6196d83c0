"""espnet2 Task for Freeze-Omni's speech output (speech decoder stages 2 and 3).

Like `espnet2/tasks/asr.py`: the class choices are declared first, then the Task says how
to build the preprocessor, collate function and model from the parsed arguments. All the
rest (Trainer, `--init_param`, `--freeze_param`, `--resume`, batching, distributed
training, collect_stats) is espnet's own.

Data (`--train_data_path_and_name_and_type`):
    text          Kaldi text of the answer                   (type `text`)
    codec_tokens  `utt_id t1 t2 ...` single-codebook codes  (type `text_int`)
    question      optional Kaldi text of the question       (type `text`); stage 3 only
                  uses it to put the answer in context when computing hidden states

The frozen LLM is named by `--llm_conf path=... dtype=...` and loaded when the model is
built; it is never part of a checkpoint.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable, Collection, Dict, List, Optional, Tuple

import numpy as np
import torch
from typeguard import typechecked

from espnet2.tasks.abs_task import AbsTask
from espnet2.torch_utils.initialize import initialize
from espnet2.train.abs_espnet_model import AbsESPnetModel
from espnet2.train.class_choices import ClassChoices
from espnet2.train.collate_fn import CommonCollateFn
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str2bool, str_or_none

from espnet_freeze_omni.data.kaldi_table import check_data_tables
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM
from espnet_freeze_omni.models.speech_output import SpeechOutputModel
from espnet_freeze_omni.speech_decoder.decoder import SpeechDecoder
from espnet_freeze_omni.speech_decoder.preprocessor import SpeechOutputPreprocessor
from espnet_freeze_omni.tasks.init_param_check import check_init_param
from espnet_freeze_omni.tasks.resumable_trainer import ResumableTrainer

speech_decoder_choices = ClassChoices(
    "speech_decoder",
    classes=dict(llama_nar_ar=SpeechDecoder),
    type_check=torch.nn.Module,
    default="llama_nar_ar",
)
model_choices = ClassChoices(
    "model",
    classes=dict(freeze_omni=SpeechOutputModel),
    type_check=AbsESPnetModel,
    default="freeze_omni",
)


class SpeechOutputTask(AbsTask):
    num_optimizers: int = 1

    class_choices_list = [
        # --speech_decoder and --speech_decoder_conf
        speech_decoder_choices,
        # --model and --model_conf
        model_choices,
    ]

    trainer = ResumableTrainer  # kill-safe checkpoints (tasks/resumable_trainer.py)
    # what stage 3 adds inside the stage-2 speech decoder (--init_param from stage 2)
    init_param_new_modules = ("speech_decoder.layers_prefix",)

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser):
        group = parser.add_argument_group("Task related")
        group.add_argument(
            "--llm_conf",
            action=NestedDictAction,
            default=dict(path=None, dtype="float32"),
            help="The frozen LLM: path (a local Hugging Face folder) and dtype "
            "(float32, bfloat16, float16). Never saved in checkpoints.",
        )
        group.add_argument(
            "--init",
            type=lambda x: str_or_none(x.lower()),
            default=None,
            help="The initialization method",
            choices=[
                "xavier_uniform",
                "xavier_normal",
                "kaiming_uniform",
                "kaiming_normal",
                None,
            ],
        )
        group = parser.add_argument_group("Preprocess related")
        group.add_argument(
            "--use_preprocessor",
            type=str2bool,
            default=True,
            help="Tokenize `text` with the LLM's tokenizer and check the codec tokens",
        )
        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    @typechecked
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable[
        [Collection[Tuple[str, Dict[str, np.ndarray]]]],
        Tuple[List[str], Dict[str, torch.Tensor]],
    ]:
        # -1 pads both text ids and codec codes; the model masks by length anyway.
        return CommonCollateFn(float_pad_value=0.0, int_pad_value=-1)

    @classmethod
    @typechecked
    def build_preprocess_fn(
        cls, args: argparse.Namespace, train: bool
    ) -> Optional[Callable[[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]]:
        if not args.use_preprocessor:
            return None
        decoder_conf = args.speech_decoder_conf or {}
        return SpeechOutputPreprocessor(
            train=train,
            llm_path=(args.llm_conf or {}).get("path"),
            codec_vocab_size=decoder_conf.get("vocab_size", 1024),
        )

    @classmethod
    def required_data_names(
        cls, train: bool = True, inference: bool = False
    ) -> Tuple[str, ...]:
        return ("text",) if inference else ("text", "codec_tokens")

    @classmethod
    def optional_data_names(
        cls, train: bool = True, inference: bool = False
    ) -> Tuple[str, ...]:
        return ("question",)

    @classmethod
    def main_worker(cls, args: argparse.Namespace):
        # espnet's text / text_int readers stop at a bad line without naming it
        check_data_tables(list(args.train_data_path_and_name_and_type or [])
                          + list(args.valid_data_path_and_name_and_type or []))
        super().main_worker(args)

    @classmethod
    def build_optimizers(cls, args: argparse.Namespace, model: torch.nn.Module):
        # espnet calls this between building the model and applying --init_param
        check_init_param(model, args, new_modules=cls.init_param_new_modules)
        return super().build_optimizers(args, model)

    @classmethod
    def check_task_requirements(
        cls,
        dataset,
        allow_variable_data_keys: bool,
        train: bool,
        inference: bool = False,
    ) -> None:
        super().check_task_requirements(dataset, allow_variable_data_keys, train, inference)
        # espnet would fail mid-epoch with a bare KeyError('<utt>') on the first utterance
        # that one file lacks; say up front which utterances and which files.
        loaders = getattr(dataset, "loader_dict", None)
        if not loaders:
            return
        names = list(loaders)
        reference = names[0]
        ref_path = dataset.debug_info[reference][0]
        for name in names[1:]:
            missing = [k for k in loaders[reference] if k not in loaders[name]]
            if missing:
                shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
                raise RuntimeError(
                    f'{len(missing)} utterance(s) in "{reference}" ({ref_path}) are missing '
                    f'from "{name}" ({dataset.debug_info[name][0]}): {shown}'
                )

    @classmethod
    @typechecked
    def build_model(cls, args: argparse.Namespace) -> SpeechOutputModel:
        llm_conf = dict(args.llm_conf or {})
        if not llm_conf.get("path"):
            raise ValueError("--llm_conf path=<local LLM folder> is required")
        llm = FrozenLLM(**llm_conf)

        decoder_class = speech_decoder_choices.get_class(args.speech_decoder)
        decoder_conf = dict(args.speech_decoder_conf or {})
        given = decoder_conf.pop("llm_hidden_size", None)
        if given is not None and int(given) != llm.hidden_size:
            raise ValueError(
                f"speech_decoder_conf llm_hidden_size={given} but the LLM at "
                f"{llm_conf['path']} has hidden size {llm.hidden_size}"
            )
        speech_decoder = decoder_class(llm_hidden_size=llm.hidden_size, **decoder_conf)

        model_class = model_choices.get_class(args.model)
        model = model_class(speech_decoder=speech_decoder, llm=llm, **(args.model_conf or {}))
        if args.init is not None:
            # The LLM is not a submodule: the initializer cannot reach it.
            initialize(model, args.init)
        logging.info(
            f"speech decoder: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
            f"frozen LLM {llm_conf['path']} (hidden {llm.hidden_size}) held outside the model"
        )
        return model
