#!/usr/bin/env bash
# Convert the audio of a (piece of a) wav.scp to mono 16-bit PCM at one sample rate with sox.
#
#   scripts/audio/format_wav_scp.sh [--fs 16000] [--audio_format wav|flac] \
#       [--segments <segments>] <wav.scp> <out-dir>
#
# Writes <out-dir>/<utt>.<audio_format>, <out-dir>/wav.scp and <out-dir>/utt2num_samples.
# wav.scp entries may be paths (any format sox reads: wav, flac, sph, ...) or Kaldi pipes
# ("<command> |", whose output must be a wav stream). With --segments, the utterances are the
# lines of <segments> (<utt> <recording> <start> <end>) cut out of the recordings in wav.scp.
# The first failure stops the script, naming the utterance and its source. (Pipes are read
# from /dev/null so that they cannot swallow the list being read.) sox runs in repeatable
# mode (-R): its dither is seeded, so a re-run gives the same bytes.
set -euo pipefail

fs=16000
audio_format=wav
segments=""
help_message="Usage: $0 [--fs 16000] [--audio_format wav|flac] [--segments file] <wav.scp> <out-dir>"
. "$(dirname "$0")/../../utils/parse_options.sh"

if [ $# -ne 2 ]; then
    echo "${help_message}" >&2; exit 1
fi
wav_scp=$1
out_dir=$2
mkdir -p "${out_dir}"
out_dir=$(cd "${out_dir}" && pwd)
: > "${out_dir}/wav.scp.tmp"
: > "${out_dir}/utt2num_samples.tmp"

convert() {  # <utt> <source spec> [<start> <end>]
    local utt=$1 src=$2 out="${out_dir}/$1.${audio_format}" trim=()
    [ $# -eq 4 ] && trim=(trim "$3" "=$4")
    if [[ "${src}" =~ \|[[:space:]]*$ ]]; then
        src=${src%|*}
        if ! bash -c "set -o pipefail; ${src}" < /dev/null | sox -R -t wav - -r "${fs}" -c 1 -b 16 -e signed-integer \
                "${out}" "${trim[@]}"; then
            echo "$0: failed to convert ${utt} from command '${src}'" >&2; return 1
        fi
    else
        if ! sox -R "${src}" -r "${fs}" -c 1 -b 16 -e signed-integer "${out}" "${trim[@]}" \
                < /dev/null; then
            echo "$0: failed to convert ${utt} from ${src}" >&2; return 1
        fi
    fi
    echo "${utt} ${out}" >> "${out_dir}/wav.scp.tmp"
    echo "${utt} $(soxi -s "${out}")" >> "${out_dir}/utt2num_samples.tmp"
}

if [ -n "${segments}" ]; then
    declare -A recording
    while read -r rec spec; do recording[${rec}]=${spec}; done < "${wav_scp}"
    while read -r utt rec start end; do
        [ -z "${utt}" ] && continue
        if [ -z "${recording[${rec}]+set}" ]; then
            echo "$0: ${utt}: recording ${rec} is not in ${wav_scp}" >&2; exit 1
        fi
        convert "${utt}" "${recording[${rec}]}" "${start}" "${end}"
    done < "${segments}"
else
    while read -r utt spec; do
        [ -z "${utt}" ] && continue
        convert "${utt}" "${spec}"
    done < "${wav_scp}"
fi
mv "${out_dir}/wav.scp.tmp" "${out_dir}/wav.scp"
mv "${out_dir}/utt2num_samples.tmp" "${out_dir}/utt2num_samples"
