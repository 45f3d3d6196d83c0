#!/usr/bin/env bash
# Stage 5 without --llm_path: a tiny random-weight Qwen2 whose byte-level BPE tokenizer is
# trained on the AN4 transcripts, written as a Hugging Face dir. Frozen and untrained: enough
# for the smoke test of the speech-input stages (stage 8 learns to drive whatever LLM it is
# given). A real LLM: set LLM_DIR in db.sh (run.sh passes it as --llm_path).
set -euo pipefail

out=exp/llm
vocab_size=300        # raised to the minimum (every byte + the chat tokens) if smaller
hidden_size=32
num_layers=1
help_message="Usage: local/build_llm.sh [--out exp/llm] [--vocab_size 300] [--hidden_size 32] [--num_layers 1]"
. utils/parse_options.sh
. ./path.sh

[ -f data/train/text ] || { echo "$0: data/train/text is missing: run stage 1 first" >&2; exit 1; }
mkdir -p "${out}_text"
cut -d' ' -f2- data/train/text > "${out}_text/lm_text.txt"
# built beside ${out} and renamed into place: a kill never leaves a ${out}/config.json next to
# missing or torn weights (stage 5 takes that file as its completion marker)
rm -rf "${out}.tmp"
python3 -m espnet_freeze_omni.bin.build_tiny_llm --family qwen2 \
    --text_file "${out}_text/lm_text.txt" --out_dir "${out}.tmp" --vocab_size "${vocab_size}" \
    --hidden_size "${hidden_size}" --num_layers "${num_layers}" --num_heads 2 --num_kv_heads 1 \
    --intermediate_size $(( hidden_size * 2 ))
rm -rf "${out}"
mv "${out}.tmp" "${out}"
