#!/usr/bin/env bash
# Split a Kaldi table (wav.scp, segments, text, ...) into contiguous, nearly equal pieces.
#
#   utils/split_scp.sh <in.scp> <out.1.scp> [<out.2.scp> ...]
#
# Piece k gets lines [floor((k-1)*N/K), floor(k*N/K)) of the N lines, so sizes differ by at
# most one and concatenating the pieces gives the input back. Asking for more pieces than
# there are lines is an error (an empty job would look like a failed one later).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "Usage: $0 <in.scp> <out.1.scp> [<out.2.scp> ...]" >&2
    exit 1
fi
in=$1; shift
if [ ! -f "${in}" ]; then
    echo "$0: no such file: ${in}" >&2; exit 1
fi
num_lines=$(grep -c . "${in}" || true)
num_pieces=$#
if [ "${num_lines}" -lt "${num_pieces}" ]; then
    echo "$0: ${in} has ${num_lines} lines: cannot split it into ${num_pieces} pieces" \
         "(use fewer jobs, e.g. --nj ${num_lines})" >&2
    exit 1
fi
for out in "$@"; do mkdir -p "$(dirname "${out}")"; done
grep . "${in}" | awk -v n="${num_lines}" -v k="${num_pieces}" -v outs="$*" '
    BEGIN { split(outs, out, " "); piece = 1; end_line = int(n / k) }
    {
        while (NR > end_line) { piece++; end_line = int(piece * n / k) }
        print > out[piece]
    }'
