#!/usr/bin/env bash
# The embedded Freeze-Omni recipe: a generated world of facts spoken by espeak-ng, a tiny
# LLM trained on it, and the whole speech-in/speech-out pipeline on 2 CPU cores. The codec
# and the speech decoder learn from tts_train/tts_dev: assistant answers in one voice.
# qa_test_unseen is qa_test spoken in voices, speeds, pitches and noise no training set uses
# (README: "Held-out voices"); each QA test set has its refs in data/local/world/<set>_refs.jsonl.
# Nothing is downloaded. `./run.sh --stage N --stop_stage M`; options: ./freeze_omni.sh --help
set -euo pipefail
. ./db.sh   # LLM_DIR, when set, is your local model dir for the frozen LLM

# espnet's on-the-fly augmentation in every speech-input stage (CommonPreprocessor options;
# training utterances only): noise at 5-30 dB SNR on 60 % of them, reverberation on 30 %,
# from the lists local/data.sh writes (docs/experiments/2026-12-07-unseen-voices.md)
augment_args="--preprocessor_conf noise_scp=data/local/augment/noise.scp"
augment_args+=" --preprocessor_conf noise_apply_prob=0.6 --preprocessor_conf noise_db_range='5_30'"
augment_args+=" --preprocessor_conf rir_scp=data/local/augment/rirs.scp"
augment_args+=" --preprocessor_conf rir_apply_prob=0.3"

./freeze_omni.sh \
    --train_set train \
    --valid_set dev \
    --test_sets "test" \
    --qa_train_set qa_train \
    --qa_test_sets "qa_test qa_test_unseen" \
    --qa_train_dialogs data/local/world/qa_train.jsonl \
    --qa_test_refs "data/local/world/{set}_refs.jsonl" \
    --tts_train_set tts_train \
    --tts_valid_set tts_dev \
    --nj 2 \
    --inference_nj 2 \
    --ngpu 0 \
    --max_wav_duration 15 \
    --codec_type embedded \
    --codec_args "--vocab_size 512" \
    --decode_args "--max_codec_tokens 400" \
    --speech_input_args "${augment_args}" \
    ${LLM_DIR:+--llm_path "${LLM_DIR}"} \
    "$@"
