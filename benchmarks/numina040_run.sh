#!/bin/bash
# The #16 table: every crmethod, ours vs numina 0.40 in the same run, on the three simulated sets.
#
# Usage: benchmarks/numina040_run.sh OUTDIR [NY NX [SEED [SET ...]]]
#
# One take of the machine lock ($LOCK, default /tmp/heavy.lock) per set; within a take each crmethod runs ours, then
# numina 0.40 (benchmarks/quality.py). numina 0.40 runs only the methods it can run here (not
# pycosmic/mm_pycosmic: PyCosmic is not on the package index; not conn/mm_conn: its cosmic_conn import
# crashes; not mmcosmic, which 0.40 removed); those rows are ours only. Each program is stopped after $TIMEOUT seconds (default 900).
# METHODS (default: all nine) restricts the crmethods run, e.g. METHODS="lacosmic deepcr".
# `uptime` before and after every run goes to OUTDIR/load.log. Then:
#   python benchmarks/numina040_table.py OUTDIR/*.json
set -u
export OUT; OUT=$(realpath -m "$1")
export NY=${2:-798} NX=${3:-1008} SEED=${4:-2025}
shift $(( $# < 4 ? $# : 4 ))
export HERE; HERE=$(cd "$(dirname "$0")" && pwd)
export PY=${PYTHON:-python} TIMEOUT=${TIMEOUT:-900} LOCK=${LOCK:-/tmp/heavy.lock}
export METHODS=${METHODS:-lacosmic mm_lacosmic deepcr mm_deepcr mmcosmic pycosmic mm_pycosmic conn mm_conn}
mkdir -p "$OUT"
for s in ${*:-equivalent flux offsets}; do
  S=$s flock "$LOCK" bash -c '
    run() {  # crmethod, extra quality.py flags
      m=$1; shift
      echo "$(date -u +%T) $S $m start: $(uptime)" >> "$OUT/load.log"
      "$PY" "$HERE/quality.py" --shape "$NY" "$NX" --set "$S" --seed "$SEED" --crmethod "$m" \
        --timeout "$TIMEOUT" --workdir "$OUT/w_${S}_$m" --json "$OUT/${S}_$m.json" "$@" > "$OUT/${S}_$m.txt" 2>&1
      echo "$(date -u +%T) $S $m end (exit $?): $(uptime)" >> "$OUT/load.log"
    }
    for m in $METHODS; do
      case $m in
        lacosmic|mm_lacosmic|deepcr|mm_deepcr) run "$m" ;;
        *) run "$m" --no-reference ;;  # numina 0.40 cannot run these here
      esac
    done
  '
done
