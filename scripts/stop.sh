#!/usr/bin/env bash
# Stop exactly what scripts/serve.sh started (by the pid files in $PPO_HOME/run), worker first.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PPO_HOME="${PPO_HOME:-$ROOT/.ppo}"
RUN="$PPO_HOME/run"
for name in worker mlflow-server prefect-server; do
  pidfile="$RUN/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
done
# what told ppo commands that these servers run (they also check the pid): gone with them
rm -f "$RUN/serve.env" "$RUN/auth"
# the database last, and only if serve.sh started it
if [ -f "$RUN/postgres.started" ]; then
  bash "$ROOT/scripts/postgres.sh" stop
fi
