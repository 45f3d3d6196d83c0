#!/usr/bin/env bash
# Freeze-Omni speech input on mini AN4 (7 real utterances shipped inside the espnet wheel):
# the end-to-end smoke test of the recipe machinery, like espnet's own mini_an4 recipes.
# `./run.sh --stage N --stop_stage M`; options: ./freeze_omni.sh --help
set -euo pipefail
. ./db.sh   # LLM_DIR, when set, is your local model dir for the frozen LLM

./freeze_omni.sh \
    --train_set train \
    --valid_set train_dev \
    --test_sets "test" \
    --nj 2 \
    --inference_nj 1 \
    --ngpu 0 \
    ${LLM_DIR:+--llm_path "${LLM_DIR}"} \
    "$@"
