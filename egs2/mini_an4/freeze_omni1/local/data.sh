#!/usr/bin/env bash
# data/train (5 utterances), data/test (2) and data/train_dev (1, a copy of a training
# utterance: a smoke-test validation set) from the mini AN4 archive inside the installed
# espnet wheel (found through the package, nothing is downloaded).
set -euo pipefail

help_message="Usage: local/data.sh"
. utils/parse_options.sh
. ./path.sh
. ./db.sh

downloads=${AN4:-downloads}
python3 -m espnet_freeze_omni.data.an4 --datadir data --downloads "${downloads}"
