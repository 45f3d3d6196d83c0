#!/usr/bin/env python3
"""Train a Freeze-Omni speech-input stage (1: CTC, 2: ASR via the LLM, 3: spoken dialog)."""
from espnet_freeze_omni.tasks.speech_input import SpeechInputTask


def get_parser():
    return SpeechInputTask.get_parser()


def main(cmd=None):
    r"""Speech-input training.

    Example:
        % python -m espnet_freeze_omni.bin.speech_input_train --print_config --model llm_asr
        % python -m espnet_freeze_omni.bin.speech_input_train \
            --config conf/speech_input_stage1_tiny.yaml \
            --train_data_path_and_name_and_type dump/raw/train/wav.scp,speech,sound \
            --train_data_path_and_name_and_type dump/raw/train/text,text,text \
            --train_shape_file exp/stats/train/speech_shape ...
    """
    SpeechInputTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
