#!/usr/bin/env bash
# Start the team set-up on 127.0.0.1: prefect server, work pool ppo-local, deployments, a process worker
# and an mlflow server. Logs and pid files go to $PPO_HOME/run; scripts/stop.sh stops exactly those.
# PPO_DB=postgres puts both servers on a PostgreSQL cluster in $PPO_HOME/postgres (scripts/postgres.sh)
# instead of sqlite files. PPO_AUTH=1 turns on authentication (Prefect's API auth string, MLflow's
# basic-auth app) with credentials generated once into $PPO_HOME/auth.env (mode 0600), never printed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${PPO_BIN:-$ROOT/.venv/bin}"
export PATH="$BIN:$PATH"
export PPO_HOME="${PPO_HOME:-$ROOT/.ppo}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
HOST="${PPO_HOST:-127.0.0.1}"  # loopback unless told otherwise (PPO_HOST=0.0.0.0 exposes the servers)
RUN="$PPO_HOME/run"
mkdir -p "$RUN" "$PPO_HOME/prefect"
export PREFECT_HOME="$PPO_HOME/prefect"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_URL="http://$HOST:$PREFECT_PORT/api"
export MLFLOW_TRACKING_URI="http://$HOST:$MLFLOW_PORT"
export PPO_PROJECT_DIR="$ROOT"
# No other web page may drive the API: cross-origin requests are answered only for the API's own origin
# (Prefect answered `access-control-allow-origin: *`), and state-changing requests need a CSRF token that
# Prefect's own UI and clients fetch first, so a cross-origin form POST is refused (403).
export PREFECT_SERVER_CORS_ALLOWED_ORIGINS="${PREFECT_SERVER_CORS_ALLOWED_ORIGINS:-http://$HOST:$PREFECT_PORT,http://localhost:$PREFECT_PORT}"
export PREFECT_SERVER_CSRF_PROTECTION_ENABLED="${PREFECT_SERVER_CSRF_PROTECTION_ENABLED:-true}"
# DNS rebinding: a page on evil.example that re-resolves to 127.0.0.1 is same-origin with the servers for
# the browser, so CORS and CSRF do not stop it; both servers answer only requests whose Host names them.
# Prefect has no such setting: scripts/prefect_server.py runs its app behind Starlette's TrustedHost check.
ALLOWED_HOSTS="${PPO_ALLOWED_HOSTS:-127.0.0.1,localhost}"
case ",$ALLOWED_HOSTS," in *",$HOST,"*) ;; *) ALLOWED_HOSTS="$ALLOWED_HOSTS,$HOST" ;; esac
export PPO_ALLOWED_HOSTS="$ALLOWED_HOSTS"
MLFLOW_HOSTS="" MLFLOW_ORIGINS=""
for h in ${ALLOWED_HOSTS//,/ }; do
  MLFLOW_HOSTS="$MLFLOW_HOSTS${MLFLOW_HOSTS:+,}$h:$MLFLOW_PORT"
  MLFLOW_ORIGINS="$MLFLOW_ORIGINS${MLFLOW_ORIGINS:+,}http://$h:$MLFLOW_PORT"
done

# Authentication for the team set-up (opt-in). The secrets live only in auth.env (0600, reused on every
# start: MLflow's admin password is fixed when its user store is first created) and in the servers'
# environment, never on a command line or in a log.
AUTH="${PPO_AUTH:-0}"
MLFLOW_APP=()
case "$AUTH" in
  0|"") AUTH=0 ;;
  1)
    if [ ! -s "$PPO_HOME/auth.env" ]; then
      (umask 077
       tok() { python3 -c "import secrets; print(secrets.token_urlsafe(32))"; }
       { echo "# make serve (PPO_AUTH=1) credentials: clients source this file; keep it private"
         echo "export PREFECT_API_AUTH_STRING=ppo:$(tok)"
         echo "export MLFLOW_TRACKING_USERNAME=admin"
         echo "export MLFLOW_TRACKING_PASSWORD=$(tok)"; } >"$PPO_HOME/auth.env.tmp"
       mv "$PPO_HOME/auth.env.tmp" "$PPO_HOME/auth.env")
    fi
    # the key MLflow's auth app signs its CSRF tokens with (server side only: not in auth.env)
    if [ ! -s "$PPO_HOME/mlflow-secret-key" ]; then
      (umask 077; python3 -c "import secrets; print(secrets.token_urlsafe(32))" >"$PPO_HOME/mlflow-secret-key")
    fi
    chmod 600 "$PPO_HOME/auth.env" "$PPO_HOME/mlflow-secret-key"
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$PPO_HOME/mlflow-secret-key")"
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    # shellcheck disable=SC1091
    . "$PPO_HOME/auth.env"
    export PREFECT_SERVER_API_AUTH_STRING="$PREFECT_API_AUTH_STRING"
    export MLFLOW_AUTH_ADMIN_USERNAME="$MLFLOW_TRACKING_USERNAME" MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_TRACKING_PASSWORD"
    export MLFLOW_AUTH_CONFIG_PATH="$PPO_HOME/mlflow-auth.ini"
    cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
# written by scripts/serve.sh (PPO_AUTH=1); the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD
default_permission = READ
database_uri = sqlite:///$PPO_HOME/mlflow-auth.db
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    MLFLOW_APP=(--app-name basic-auth) ;;
  *) echo "error: PPO_AUTH=$AUTH; allowed: 0, 1" >&2; exit 2 ;;
esac

start() {  # name, command...
  local name=$1; shift
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$RUN/$name.pid"))"; return
  fi
  setsid nohup "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN/$name.pid"
  echo "started $name (pid $!, log $RUN/$name.log)"
}

wait_http() {  # name, url
  for _ in $(seq 1 180); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$2" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; then
      echo "error: $1 exited; last lines of $RUN/$1.log:" >&2; tail -20 "$RUN/$1.log" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "error: $1 did not answer at $2 within 90 s" >&2; exit 1
}

DB="${PPO_DB:-sqlite}"
case "$DB" in
  sqlite) export MLFLOW_BACKEND_STORE_URI="sqlite:///$PPO_HOME/mlflow.db" ;;
  postgres)
    bash "$ROOT/scripts/postgres.sh" start
    # passwords travel in the environment, not on command lines that `ps` shows
    MLFLOW_BACKEND_STORE_URI="$(bash "$ROOT/scripts/postgres.sh" url mlflow)"
    PREFECT_SERVER_DATABASE_CONNECTION_URL="$(bash "$ROOT/scripts/postgres.sh" url prefect asyncpg)"
    export MLFLOW_BACKEND_STORE_URI PREFECT_SERVER_DATABASE_CONNECTION_URL
    echo "databases: PostgreSQL on 127.0.0.1:$(cat "$RUN/postgres.port") (data $PPO_HOME/postgres)" ;;
  *) echo "error: PPO_DB=$DB; allowed: sqlite, postgres" >&2; exit 2 ;;
esac
echo "$DB" >"$RUN/db"

start prefect-server python "$ROOT/scripts/prefect_server.py" --host "$HOST" --port "$PREFECT_PORT"
start mlflow-server mlflow server --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
  --artifacts-destination "$PPO_HOME/mlartifacts" \
  --allowed-hosts "$MLFLOW_HOSTS" --cors-allowed-origins "$MLFLOW_ORIGINS" "${MLFLOW_APP[@]}"
wait_http prefect-server "$PREFECT_API_URL/health"
wait_http mlflow-server "$MLFLOW_TRACKING_URI/health"
if [ "$AUTH" = 1 ]; then  # MLflow's user store (password hashes) is created on its first start
  for _ in $(seq 1 20); do [ -f "$PPO_HOME/mlflow-auth.db" ] && break; sleep 0.5; done
  chmod 600 "$PPO_HOME/mlflow-auth.db" 2>/dev/null || true
fi

prefect work-pool inspect ppo-local >/dev/null 2>&1 || prefect work-pool create ppo-local --type process >/dev/null
(cd "$ROOT" && prefect --no-prompt deploy --all) >"$RUN/deploy.log" 2>&1 || {
  echo "error: prefect deploy failed:" >&2; tail -30 "$RUN/deploy.log" >&2; exit 1; }
echo "deployed: $(grep -c "Deployment '" "$RUN/deploy.log" || true) deployments (log $RUN/deploy.log)"
start worker prefect worker start --pool ppo-local --type process

cat >"$RUN/serve.env" <<ENV
export PREFECT_API_URL=$PREFECT_API_URL
export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI
export PPO_HOME=$PPO_HOME
ENV
echo "$AUTH" >"$RUN/auth"
cat <<MSG
ready:
  databases       $DB
  Prefect UI/API  http://$HOST:$PREFECT_PORT
  MLflow UI       $MLFLOW_TRACKING_URI
  source $RUN/serve.env
MSG
if [ "$AUTH" = 1 ]; then
  echo "  source $PPO_HOME/auth.env   (credentials, mode 0600; the Prefect UI asks for PREFECT_API_AUTH_STRING)"
fi
cat <<MSG
  .venv/bin/prefect deployment run train-ppo/train-ppo --watch
  .venv/bin/prefect deployment run promote-model/promote -p version=1 --watch
  make stop
MSG
