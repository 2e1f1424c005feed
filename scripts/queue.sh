#!/usr/bin/env bash
# One CPU-heavy job at a time on a 2-core box: run the lines of a queue file in order, in the background.
#
#   nohup bash scripts/queue.sh runs/queue/jobs.txt > runs/queue/runner.log 2>&1 &
#   echo "python -m benchmarks.hybrid" >> runs/queue/jobs.txt        # append while it runs
#
# A line runs once: its number goes to jobs.txt.done when it ends (with its exit status in the log), so a
# restarted runner goes on after the last finished line. Blank lines and lines starting with # are skipped.
# The runner waits for new lines until a line reads STOP.
set -uo pipefail
cd "$(dirname "$0")/.."
queue=${1:?usage: queue.sh JOBS_FILE}
done_file="$queue.done"
logdir="$(dirname "$queue")/logs"
mkdir -p "$logdir"
touch "$queue" "$done_file"
. "${HCE_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
n=0
while true; do
  n=$((n + 1))
  line=$(sed -n "${n}p" "$queue")
  if [[ -z "$line" && $(wc -l < "$queue") -lt $n ]]; then
    n=$((n - 1))
    sleep 20
    continue
  fi
  [[ "$line" == "STOP" ]] && break
  [[ -z "$line" || "$line" == \#* ]] && continue
  grep -qx "$n" "$done_file" && continue
  echo "$(date -u +%FT%TZ) start $n: $line"
  bash -c "$line" > "$logdir/job-$n.log" 2>&1
  rc=$?
  echo "$(date -u +%FT%TZ) end $n: rc $rc"
  echo "$n" >> "$done_file"
done
