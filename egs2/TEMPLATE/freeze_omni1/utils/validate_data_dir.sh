#!/usr/bin/env bash
# Kaldi's familiar name for the data-dir check; the work is done in Python:
#   utils/validate_data_dir.sh [--check_audio true] [--sample_rate 16000] data/train
# (see espnet_freeze_omni/data/validation.py: every problem with file, line and utterance id).
exec python3 -m espnet_freeze_omni.bin.validate_data_dir "${@: -1}" "${@:1:$#-1}"
