#!/usr/bin/env bash
# INTEGRATION PENDING: stand-in for the driver's stage 15 on ASR-only test sets, until
# espnet_freeze_omni.bin.speech2speech_inference lands (then stage 15 with
# --decode_config conf/decode_asr.yaml writes the same files and this script goes away).
#
# Decodes dump/raw16k/<set>/wav.scp with the speech-input stage-2 model (its CTC head was
# trained along with the encoder it shares with the LLM path) into exactly what stage 16
# scores (see the comment above decode_test_sets in freeze_omni.sh):
#   exp/decode/<set>/asr_ctc/text   CTC greedy transcripts      -> asr_wer_ctc
#   exp/decode/<set>/asr_llm/text   transcripts through the LLM -> asr_wer_llm
# The two modes run side by side, each split over --nj jobs (JOB=1:N, logs in exp/log/).
set -euo pipefail

test_sets="test"
nj=1
expdir=exp
dumpdir=dump
model_stage=2          # speech input stage whose model decodes (valid.loss.best.pth)
max_new_tokens=32      # LLM decoding: AN4 utterances are short; a random tiny LLM may never stop
python=python3
help_message="Usage: local/decode_asr.sh [--test_sets \"test\"] [--nj 1] [--expdir exp] [--dumpdir dump]"
. utils/parse_options.sh
. ./path.sh
. ./cmd.sh

model_dir=${expdir}/speech_input_stage${model_stage}
for f in "${model_dir}/config.yaml" "${model_dir}/valid.loss.best.pth"; do
    if [ ! -f "${f}" ]; then
        echo "$0: ${f} is missing: train it first (./run.sh --stage 1 --stop_stage $(( 6 + model_stage )))" >&2
        exit 1
    fi
done

decode_mode() {  # <set> <sub dir> <speech_input_inference --mode>
    local dset=$1 sub=$2 mode=$3 data=${dumpdir}/raw16k/$1 out=${expdir}/decode/$1 jobs n
    jobs=$(( nj < $(grep -c . "${data}/wav.scp") ? nj : $(grep -c . "${data}/wav.scp") ))
    mkdir -p "${out}/logdir" "${out}/${sub}"
    utils/split_scp.sh "${data}/wav.scp" \
        $(for n in $(seq "${jobs}"); do echo "${out}/logdir/${sub}_keys.${n}.scp"; done)
    ${decode_cmd} JOB=1:"${jobs}" "${expdir}/log/decode_asr/${dset}_${sub}.JOB.log" \
        ${python} -m espnet_freeze_omni.bin.speech_input_inference --mode "${mode}" \
            --train_config "${model_dir}/config.yaml" \
            --model_file "${model_dir}/valid.loss.best.pth" \
            --wav_scp "${data}/wav.scp" --key_file "${out}/logdir/${sub}_keys.JOB.scp" \
            --max_new_tokens "${max_new_tokens}" \
            --output_dir "${out}/logdir/${sub}.JOB"
    for n in $(seq "${jobs}"); do cat "${out}/logdir/${sub}.${n}/text"; done | sort > "${out}/${sub}/text"
    echo "$0: ${out}/${sub}/text: $(grep -c . "${out}/${sub}/text") utterances (${mode}, ${model_dir})"
}

for dset in ${test_sets}; do
    [ -f "${dumpdir}/raw16k/${dset}/wav.scp" ] || {
        echo "$0: ${dumpdir}/raw16k/${dset}/wav.scp is missing: run stages 1-4 first" >&2; exit 1; }
    decode_mode "${dset}" asr_ctc ctc & ctc_pid=$!
    decode_mode "${dset}" asr_llm llm & llm_pid=$!
    rc=0
    wait "${ctc_pid}" || rc=1
    wait "${llm_pid}" || rc=1
    [ "${rc}" -eq 0 ] || { echo "$0: decoding ${dset} failed, see ${expdir}/log/decode_asr/" >&2; exit 1; }
done
