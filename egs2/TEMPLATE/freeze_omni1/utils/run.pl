#!/usr/bin/env bash
# utils/run.pl: run a command, or an array of commands, as jobs on THIS machine; each job
# writes its own log. (A bash script: it keeps Kaldi's name because cmd.sh files and
# espnet2.bin.launch know the local job runner as "run.pl".)
#
#   utils/run.pl [options] [JOB=1:N] <log-file> <command> [<arg> ...]
#
#   utils/run.pl JOB=1:4 exp/log/dump.JOB.log scripts/audio/format_wav_scp.sh split/wav.JOB.scp out/JOB
#
# With JOB=a:b (any variable name works, e.g. SPLIT=1:8), the command runs once per value and
# every occurrence of the name in the log path and the arguments is replaced by the value.
# A single command argument is a whole shell command line, run as is. With several, an
# argument without whitespace or quotes is passed to bash as is (so '|', '>' and '&&' given
# as separate arguments work as in Kaldi) and any other argument is quoted.
# Each log starts with the command and ends with "# Ended (code N) at <date>, elapsed time S
# seconds". When jobs fail, every failed job and its log is named and the exit status is 1.
#
# Options (before JOB=...):
#   --max_jobs_run N   jobs running at once (default: the number of CPUs)
#   --gpu N, --num_threads N, --mem M, --time T, --num_nodes N, --config F
#                      accepted and ignored here, so that one command line works with
#                      utils/run.pl and utils/slurm.pl alike (--num_nodes > 1 is refused)
set -u

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 1
}

# `nproc --all`: plain nproc obeys OMP_NUM_THREADS, which path.sh sets to 1 for the jobs
max_jobs_run=$(nproc --all 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
while [ $# -gt 0 ]; do
    case "$1" in
        --max_jobs_run|--max-jobs-run) max_jobs_run=$2; shift 2 ;;
        --max_jobs_run=*|--max-jobs-run=*) max_jobs_run=${1#*=}; shift ;;
        --num_nodes|--num-nodes)
            if [ "$2" -gt 1 ]; then
                echo "run.pl: runs on this machine only; --num_nodes $2 needs utils/slurm.pl" >&2
                exit 1
            fi
            shift 2 ;;
        --gpu|--num_threads|--num-threads|--mem|--time|--config) shift 2 ;;
        --gpu=*|--num_threads=*|--num-threads=*|--mem=*|--time=*|--config=*) shift ;;
        --help|-h) usage ;;
        --*) echo "run.pl: unknown option $1" >&2; exit 1 ;;
        *) break ;;
    esac
done
if ! [[ "${max_jobs_run}" =~ ^[1-9][0-9]*$ ]]; then
    echo "run.pl: --max_jobs_run must be a positive integer, got '${max_jobs_run}'" >&2
    exit 1
fi

job_var=""; first=1; last=1
if [ $# -gt 0 ] && [[ "$1" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+)(:([0-9]+))?$ ]]; then
    job_var=${BASH_REMATCH[1]}
    first=${BASH_REMATCH[2]}
    last=${BASH_REMATCH[4]:-${first}}
    shift
    if [ "${first}" -gt "${last}" ]; then
        echo "run.pl: empty job range ${job_var}=${first}:${last}" >&2; exit 1
    fi
elif [ $# -gt 0 ] && [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*:.* ]]; then
    echo "run.pl: malformed job range '$1' (expected e.g. JOB=1:10)" >&2; exit 1
fi
[ $# -lt 2 ] && usage
log_template=$1; shift

command=""
if [ $# -eq 1 ]; then
    command=$1  # a single argument is a whole shell command line: taken verbatim
else
    for arg in "$@"; do
        if [[ -n "${arg}" && ! "${arg}" =~ [[:space:]\'\"] ]]; then
            command+="${arg} "
        else
            command+="'${arg//\'/\'\\\'\'}' "   # single-quote, escaping embedded quotes
        fi
    done
fi

status_dir=$(mktemp -d "${TMPDIR:-/tmp}/run_pl.XXXXXX")
trap 'rm -rf "${status_dir}"' EXIT
trap 'echo "run.pl: interrupted, stopping jobs" >&2; kill $(jobs -p) 2>/dev/null; exit 130' INT TERM

run_one() {  # <job id> <log> <command>
    local id=$1 log=$2 cmd=$3 start rc
    mkdir -p "$(dirname "${log}")" || { echo 1 > "${status_dir}/${id}"; return; }
    start=$(date +%s)
    {
        echo "# ${cmd}"
        echo "# Started at $(date)"
        echo "#"
    } > "${log}"
    bash -c "${cmd}" >> "${log}" 2>&1 < /dev/null
    rc=$?
    {
        echo "# Accounting: time=$(( $(date +%s) - start )) threads=1"
        echo "# Ended (code ${rc}) at $(date), elapsed time $(( $(date +%s) - start )) seconds"
    } >> "${log}"
    echo "${rc}" > "${status_dir}/${id}"
}

for (( id = first; id <= last; id++ )); do
    if [ -n "${job_var}" ]; then
        log=${log_template//${job_var}/${id}}
        cmd=${command//${job_var}/${id}}
    else
        log=${log_template}; cmd=${command}
    fi
    while [ "$(jobs -rp | wc -l)" -ge "${max_jobs_run}" ]; do
        wait -n 2>/dev/null || sleep 0.2
    done
    run_one "${id}" "${log}" "${cmd}" &
done
wait

num_jobs=$(( last - first + 1 ))
num_failed=0
for (( id = first; id <= last; id++ )); do
    rc=$(cat "${status_dir}/${id}" 2>/dev/null || echo "unknown")
    if [ "${rc}" != 0 ]; then
        num_failed=$(( num_failed + 1 ))
        log=${log_template}; [ -n "${job_var}" ] && log=${log_template//${job_var}/${id}}
        if [ -n "${job_var}" ]; then
            echo "run.pl: job ${id} failed with exit code ${rc}, log is in ${log}" >&2
        else
            echo "run.pl: job failed with exit code ${rc}, log is in ${log}" >&2
        fi
    fi
done
if [ "${num_failed}" -gt 0 ]; then
    [ -n "${job_var}" ] && echo "run.pl: ${num_failed} / ${num_jobs} failed, logs are ${log_template}" >&2
    exit 1
fi
exit 0
