#!/usr/bin/env bash
# Kaldi-style command-line options for recipe scripts. Source it AFTER declaring defaults:
#
#   stage=1
#   nj=4
#   use_gpu=false
#   help_message="Usage: $0 [options] <data-dir>"
#   . utils/parse_options.sh
#
# Then `./run.sh --stage 3 --nj=8 --use-gpu true data/train` sets stage=3, nj=8,
# use_gpu=true and leaves "data/train" in "$@". Dashes in option names become underscores.
# An option whose variable was not declared is an error (catches typos); a variable whose
# default is true/false only accepts true/false. `--config FILE` sources FILE (lines of
# name=value) at that point, so later options override it. `--help` prints $help_message.
# Options must come before positional arguments; `--` ends them.

while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; break ;;
        --help|-h)
            if [ -n "${help_message:-}" ]; then printf '%s\n' "${help_message}"
            else echo "$0: no help message; see the option defaults at the top of $0"; fi
            exit 0 ;;
        --*) ;;
        *) break ;;
    esac

    __po_arg="${1#--}"
    if [[ "${__po_arg}" == *=* ]]; then
        __po_name="${__po_arg%%=*}"; __po_value="${__po_arg#*=}"; shift
    else
        __po_name="${__po_arg}"
        if [ $# -lt 2 ]; then
            echo "$0: option --${__po_name} needs a value" >&2; exit 1
        fi
        __po_value="$2"; shift 2
    fi
    __po_name="${__po_name//-/_}"

    if [ "${__po_name}" = config ]; then
        if [ ! -r "${__po_value}" ]; then
            echo "$0: --config ${__po_value}: no such readable file" >&2; exit 1
        fi
        # shellcheck disable=SC1090
        . "${__po_value}"
        continue
    fi
    if ! [[ "${__po_name}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "$0: invalid option name --${__po_name}" >&2; exit 1
    fi
    if [ -z "${!__po_name+set}" ]; then
        echo "$0: unknown option --${__po_name} (no variable '${__po_name}' is declared in $0)" >&2
        exit 1
    fi
    case "${!__po_name}" in
        true|false)
            if [ "${__po_value}" != true ] && [ "${__po_value}" != false ]; then
                echo "$0: option --${__po_name} takes true or false, got '${__po_value}'" >&2
                exit 1
            fi ;;
    esac
    printf -v "${__po_name}" '%s' "${__po_value}"
done
unset __po_arg __po_name __po_value
true
