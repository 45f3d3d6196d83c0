#!/usr/bin/env bash
# Freeze-Omni speech input on mini AN4 (7 real utterances shipped inside the espnet wheel):
# the end-to-end smoke test of the recipe machinery with debug-size models, like espnet's
# own mini_an4 recipes (tests/test_recipe_mini_an4.py runs it). ASR only: no QA data, so
# the stages are 1-8 (data .. speech input stage 2), 15 (ASR decoding with the stage-2
# model: CTC and through the LLM) and 16 (scoring):
#
#   ./run.sh --stage 1 --stop_stage 8 && ./run.sh --stage 15 --stop_stage 16
#
# Options: ./freeze_omni.sh --help
set -euo pipefail
. ./db.sh   # LLM_DIR, when set, is your local model dir for the frozen LLM

./freeze_omni.sh \
    --train_set train \
    --valid_set train_dev \
    --test_sets "test" \
    --nj 2 \
    --inference_nj 1 \
    --ngpu 0 \
    --decode_args "--max_new_tokens 32" \
    ${LLM_DIR:+--llm_path "${LLM_DIR}"} \
    "$@"
