#!/usr/bin/env bash
# Convert every line of a model list, N at a time, with nothing but xargs -P.
#
#   examples/xargs-parallel.sh [MODELS_TXT] [PARALLEL]      (defaults: models.txt beside this script, 2)
#
# MODELS_TXT has one job per line: `SOURCE TYPE OUTPUT` (a Hub id or a local checkpoint, a llama.cpp type
# name, the output path); blank lines and `#` comments are ignored. The core of it is one line:
#
#   grep -Ev '^\s*(#|$)' models.txt | xargs -P 4 -L 1 sh -c 'test -e "$3" || quantcli convert "$1" --type "$2" -o "$3" --json'
#
# It is safe to re-run: `quantcli convert` writes to a temp file and renames it at the end, so an output that
# exists is complete and is skipped; a conversion that was killed midway continues from its per-tensor cache
# (--resume). Each conversion gets nproc/PARALLEL threads. Results: one JSON line per conversion on stdout.
# Exit status: 0 if every conversion succeeded, 123 (xargs) if any failed.
set -euo pipefail

models=${1:-"$(dirname "$0")/models.txt"}
parallel=${2:-2}
quantcli=${QUANTCLI:-quantcli}          # e.g. QUANTCLI="python -m quantcli" in a checkout
threads=$(( $(nproc) / parallel ))
(( threads >= 1 )) || threads=1

# sed strips comments and trailing blanks (xargs -L would join a line ending in a blank with the next);
# the sh -c body gets SOURCE TYPE OUTPUT as $1 $2 $3.
sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$models" | grep -Ev '^[[:space:]]*$' |
  xargs -P "$parallel" -L 1 sh -c '
    test -e "$3" && { echo "{\"ok\": true, \"status\": \"skipped\", \"output\": \"$3\"}"; exit 0; }
    mkdir -p "$(dirname "$3")"
    exec $0 convert "$1" --type "$2" -o "$3" --threads '"$threads"' --resume --json
  ' "$quantcli"
