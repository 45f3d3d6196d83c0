#!/usr/bin/env bash
# Kaldi's familiar name for the data-dir repair; the work is done in Python:
#   utils/fix_data_dir.sh [--check_audio true] [--sample_rate 16000] data/train
# Originals go to data/train/.backup/, dropped utterances and reasons to .backup/dropped.txt.
exec python3 -m espnet_freeze_omni.bin.fix_data_dir "${@: -1}" "${@:1:$#-1}"
