#!/usr/bin/env bash
# Stage 5 without --llm_path: a tiny random-weight Qwen2 whose BPE tokenizer is trained on the
# AN4 transcripts, as a Hugging Face dir. Frozen and untrained: enough for the smoke test of
# the speech-input stages (ASR via the LLM learns to drive whatever LLM it is given).
# INTEGRATION PENDING: build_tiny_llm is being finished by another engineer.
set -euo pipefail

out=exp/llm
help_message="Usage: local/build_llm.sh [--out exp/llm]"
. utils/parse_options.sh
. ./path.sh

[ -f data/train/text ] || { echo "$0: data/train/text is missing: run stage 1 first" >&2; exit 1; }
mkdir -p "${out}_text"
cut -d' ' -f2- data/train/text > "${out}_text/lm_text.txt"
python3 -m espnet_freeze_omni.bin.build_tiny_llm --family qwen2 \
    --text_file "${out}_text/lm_text.txt" --out_dir "${out}" --vocab_size 100
