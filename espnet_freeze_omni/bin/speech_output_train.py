#!/usr/bin/env python3
"""Train Freeze-Omni's speech decoder (stages 2 and 3), like espnet2/bin/asr_train.py."""
from espnet_freeze_omni.tasks.speech_output import SpeechOutputTask


def get_parser():
    parser = SpeechOutputTask.get_parser()
    return parser


def main(cmd=None):
    r"""Speech-output (speech decoder) training.

    Example:

        % python -m espnet_freeze_omni.bin.speech_output_train --print_config \
                > conf/my_speech_output.yaml
        % python -m espnet_freeze_omni.bin.speech_output_train \
                --config conf/speech_output_stage2_tiny.yaml \
                --llm_conf path=/path/to/llm \
                --train_data_path_and_name_and_type dump/train/text,text,text \
                --train_data_path_and_name_and_type dump/train/codec_tokens,codec_tokens,text_int \
                ...
    """
    SpeechOutputTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
