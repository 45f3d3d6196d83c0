#!/usr/bin/env bash
# Stage 1 of the paper-scale recipe: Kaldi data dirs from the corpora named in db.sh.
#
#   data/train_960, dev (= dev_clean + dev_other), dev_clean, dev_other, test_clean,
#        test_other                         LibriSpeech (ASR: speech input stages 1-2)
#   data/local/moss/qa_train.jsonl          moss-003-sft multi-round Q&A as dialogs (stage 9
#                                           regenerates the answers with the frozen LLM)
#   data/qa_train                           their user turns, spoken (speech input stage 3)
#   data/llama_questions, web_questions, triviaqa
#        + data/local/qa_eval/<set>_refs.jsonl   the spoken QA test sets of SPEC §4
#   data/tts_train (when CODEC_CORPUS is set)   24 kHz speech + text for the codec and the
#                                               speech decoder (LibriTTS layout)
#
# Questions without recordings are spoken by TTS_CMD (db.sh), or espeak-ng when it is empty.
# Every corpus path is checked before anything runs; a missing one is named with its db.sh
# variable. Parts already done are kept (a .done marker each); --force true redoes them.
set -euo pipefail

train_parts="train-clean-100 train-clean-360 train-other-500"  # data/train_960
moss_language=en          # en | zh | all: the user turns must be speakable by the ASR's language
max_dialogs=60000         # moss-003-sft dialogs kept (paper: ~60k multi-round Q&A)
max_question_words=40     # longer user turns are not spoken questions
max_eval_items=0          # per QA test set, first N (0: all)
trailing_silence=1.0      # seconds after each spoken question: the turn end must be heard
nj=8                      # parallel TTS jobs
force=false
help_message="Usage: local/data.sh [--train_parts \"...\"] [--max_dialogs 60000] [--nj 8] ... (see the variables in $0)"
. utils/parse_options.sh
. ./path.sh
. ./db.sh

die() { echo "$0: $*" >&2; exit 1; }
need_db() {  # <db.sh variable> <file|dir> <what it should hold>
    local name=$1 kind=$2 what=$3 value=${!1:-}
    [ -n "${value}" ] || die "${name} is empty in db.sh: set it to ${what}"
    if [ "${kind}" = dir ]; then
        [ -d "${value}" ] || die "${name}=${value} (db.sh) is not a directory: it should be ${what}"
    else
        [ -e "${value}" ] || die "${name}=${value} (db.sh) does not exist: it should be ${what}"
    fi
}
done_or_force() { [ "${force}" = false ] && [ -f "$1" ]; }

need_db LIBRISPEECH dir "the LibriSpeech root (train-clean-100/, dev-clean/, ... inside)"
need_db MOSS_SFT file "the moss-003-sft JSON lines file (e.g. moss-003-sft-no-tools.jsonl)"
need_db LLAMA_QUESTIONS file "the LLaMA Questions TSV (Questions, Answer, Wav Filename) or its folder"
need_db WEB_QUESTIONS file "the Web Questions test JSON (a list of {qText, answers})"
need_db TRIVIAQA file "the TriviaQA questions, JSON lines {question, answer: {aliases, value}}"
[ -z "${CODEC_CORPUS:-}" ] || need_db CODEC_CORPUS dir "a 24 kHz LibriTTS-style corpus root"
tts_args=()
[ -n "${TTS_CMD:-}" ] && tts_args=(--tts_cmd "${TTS_CMD}")

# ---------------------------------------------------------------- LibriSpeech
if done_or_force data/train_960/.data.done; then
    echo "$0: LibriSpeech dirs are done (data/train_960/.data.done)"
else
    python3 local/prepare_librispeech.py --corpus "${LIBRISPEECH}" --datadir data \
        --parts "${train_parts} dev-clean dev-other test-clean test-other" \
        --combine "train_960=$(echo ${train_parts} | tr ' ' ',')" \
        --combine "dev=dev-clean,dev-other"
    touch data/train_960/.data.done
fi

# ---------------------------------------------------------------- moss-003-sft dialogs
if done_or_force data/qa_train/.data.done; then
    echo "$0: data/qa_train is done (data/qa_train/.data.done)"
else
    python3 local/prepare_moss.py --input "${MOSS_SFT}" --out data/local/moss/qa_train.jsonl \
        --language "${moss_language}" --max_dialogs "${max_dialogs}" \
        --max_question_words "${max_question_words}"
    python3 -m espnet_freeze_omni.bin.prepare_qa_eval_set --format dialogs \
        --input data/local/moss/qa_train.jsonl --data_dir data/qa_train \
        --wav_dir data/local/wav/qa_train --vary_voices true \
        --trailing_silence "${trailing_silence}" --nj "${nj}" "${tts_args[@]}"
    touch data/qa_train/.data.done
fi

# ---------------------------------------------------------------- QA test sets
for spec in "llama_questions:LLAMA_QUESTIONS" "web_questions:WEB_QUESTIONS" "triviaqa:TRIVIAQA"; do
    set_name=${spec%%:*} var=${spec#*:}
    if done_or_force "data/${set_name}/.data.done"; then
        echo "$0: data/${set_name} is done"; continue
    fi
    python3 -m espnet_freeze_omni.bin.prepare_qa_eval_set --format "${set_name}" \
        --input "${!var}" --data_dir "data/${set_name}" \
        --refs "data/local/qa_eval/${set_name}_refs.jsonl" \
        --wav_dir "data/local/wav/${set_name}" --max_items "${max_eval_items}" \
        --trailing_silence "${trailing_silence}" --nj "${nj}" "${tts_args[@]}"
    touch "data/${set_name}/.data.done"
done

# ---------------------------------------------------------------- 24 kHz speech for speech output
if [ -n "${CODEC_CORPUS:-}" ]; then
    if done_or_force data/tts_train/.data.done; then
        echo "$0: data/tts_train is done"
    else
        python3 local/prepare_libritts.py --corpus "${CODEC_CORPUS}" --out data/tts_train
        touch data/tts_train/.data.done
    fi
else
    echo "$0: CODEC_CORPUS is empty in db.sh: the codec and the speech decoder will train on" \
         "LibriSpeech resampled to 24 kHz (no content above 8 kHz)"
fi
