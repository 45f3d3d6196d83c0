#!/usr/bin/env bash
# Stage 5 reaches this only when db.sh names no LLM: this recipe freezes a real one.
echo "$0: this recipe uses a real frozen LLM: set QWEN2_7B_INSTRUCT in db.sh to your local" \
     "Hugging Face folder of Qwen2-7B-Instruct (run.sh passes it as --llm_path)" >&2
exit 1
