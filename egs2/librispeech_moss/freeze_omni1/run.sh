#!/usr/bin/env bash
# Freeze-Omni at paper scale: LibriSpeech 960 h for the speech input, moss-003-sft dialogs
# (questions spoken by TTS) for spoken Q&A and the state head, Qwen2-7B-Instruct frozen, and
# LLaMA Questions / Web Questions / TriviaQA for spoken QA accuracy (SPEC §1, §2, §4).
# Set the corpora and the LLM in db.sh first. Models: the top-level conf/*_paper.yaml (linked
# in conf/). Sized for one node of 8 GPUs, as in the paper. With CODEC_CORPUS (db.sh), the TTS
# corpus data/tts_train trains the codec and the speech decoder; without it, train_960 does.
#
# The speech-out ceiling (espeak-ng renders of the answers) is off: the assistant's voice here
# is the TTS corpus', not espeak-ng's.
#
#   ./run.sh --stage N --stop_stage M          options: ./freeze_omni.sh --help
set -euo pipefail
. ./db.sh

./freeze_omni.sh \
    --train_set train_960 \
    --valid_set dev \
    --test_sets "test_clean test_other dev_clean dev_other" \
    --qa_train_set qa_train \
    --qa_test_sets "llama_questions web_questions triviaqa" \
    --qa_train_dialogs data/local/moss/qa_train.jsonl \
    --qa_test_refs "data/local/qa_eval/{set}_refs.jsonl" \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --max_wav_duration 30 \
    --nj 32 \
    --inference_nj 8 \
    --ngpu 8 \
    --gpu_inference true \
    --speech_out_ceiling false \
    ${QWEN2_7B_INSTRUCT:+--llm_path "${QWEN2_7B_INSTRUCT}"} \
    ${CODEC_CORPUS:+--tts_train_set tts_train} \
    "$@"
