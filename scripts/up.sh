#!/usr/bin/env bash
# The local stack in the foreground, under honcho (Procfile): Redis and SeaweedFS (S3) unless
# ones are already given, then the ingress and the workers. Ctrl-C stops everything.
#   MJHOOK_REDIS_URL    use this Redis if it answers PING (default redis://127.0.0.1:6379/0)
#   MJHOOK_S3_ENDPOINT  use this S3 instead of starting SeaweedFS on 127.0.0.1:8333
#   UP_INGRESS_PORT     the ingress's port on 127.0.0.1 (default 8000)
#   UP_EXTRA            more Procfile processes to run too (make demo: "sim demo"); none by default.
#                       With `sim` (the provider simulator on :8090) the stack is its client, with its
#                       key, unless MJHOOK_PROVIDER_URL is set.
# ./.env, when present, sets variables over the shell's, as honcho would (honcho itself is given
# no env file: every process gets what is decided here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
# The Makefile's VENV, relative to the project root or absolute.
case $VENV in
  /*) export PATH="$VENV/bin:$PATH" ;;
  *) export PATH="$PWD/$VENV/bin:$PATH" ;;
esac

if [ -f .env ]; then
  # honcho's own parser, so that a value means what it meant when honcho read the file. A .env it
  # cannot read stops here: started without it, the stack would drop its settings (a token) unsaid.
  dotenv=$("$VENV/bin/python" - <<'PY'
import re, shlex
from honcho.environ import parse
with open(".env") as f:
    for name, value in parse(f.read()).items():
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            print(f"export {name}={shlex.quote(value)}")
PY
) || { echo "up: cannot read .env (see the error above); fix it or move it away" >&2; exit 1; }
  eval "$dotenv"
fi

redis_answers() {  # URL: does a Redis answer PING there? (redis-py: it knows unix:// too)
  "$VENV/bin/python" -c 'import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2, socket_timeout=2).ping()' "$1" >/dev/null 2>&1
}

shown_url() {  # where a Redis URL points, as redis-py reads it, for messages: never its user or password
  "$VENV/bin/python" - "$1" <<'PY'
import sys
from redis.connection import parse_url
try:
    options = parse_url(sys.argv[1])
except Exception:
    print("(a URL redis-py cannot read)")
else:
    if "path" in options:
        where = f"unix://{options['path']}"
    else:
        host = options.get("host", "localhost")
        host = f"[{host}]" if ":" in host else host
        where = f"{sys.argv[1].split('://', 1)[0].lower()}://{host}:{options.get('port', 6379)}/{options.get('db', 0)}"
    if options.get("username") or options.get("password"):
        where = where.replace("://", "://***@", 1)
    print(where)
PY
}

default_redis_url=redis://127.0.0.1:6379/0
redis_url=${MJHOOK_REDIS_URL:-$default_redis_url}
names=()
# Settings chosen here rather than by the user: the banner gives them to mjhook in another shell.
chosen=(MJHOOK_REDIS_URL)

if redis_answers "$redis_url"; then
  redis_line="already running at $(shown_url "$redis_url")"
elif [ "$redis_url" != "$default_redis_url" ]; then
  echo "up: nothing answers at MJHOOK_REDIS_URL=$(shown_url "$redis_url"); unset it to start a local Redis" >&2
  exit 1
elif ! command -v redis-server >/dev/null 2>&1; then
  echo "up: redis-server is not installed (make up installs it; or apt-get install redis-server)" >&2
  exit 1
else
  mkdir -p .data/redis
  names+=(redis)
  redis_line="127.0.0.1:6379 (redis-server, data in .data/redis)"
fi
export MJHOOK_REDIS_URL=$redis_url
# Readable lines in the terminal (the default, json, is for log pipelines).
export MJHOOK_LOG_FORMAT=${MJHOOK_LOG_FORMAT:-text}

if [ -n "${MJHOOK_S3_ENDPOINT:-}" ]; then
  s3_line="using $MJHOOK_S3_ENDPOINT"
else
  mkdir -p .data/s3
  export MJHOOK_S3_ENDPOINT=http://127.0.0.1:8333
  export MJHOOK_S3_ACCESS_KEY=${MJHOOK_S3_ACCESS_KEY:-mjhook}
  export MJHOOK_S3_SECRET_KEY=${MJHOOK_S3_SECRET_KEY:-mjhook-secret}
  chosen+=(MJHOOK_S3_ENDPOINT MJHOOK_S3_ACCESS_KEY MJHOOK_S3_SECRET_KEY)
  # The gateway accepts exactly these credentials.
  "$VENV/bin/python" - <<'PY'
import json, os
identity = {
    "name": "mjhook",
    "credentials": [{"accessKey": os.environ["MJHOOK_S3_ACCESS_KEY"],
                     "secretKey": os.environ["MJHOOK_S3_SECRET_KEY"]}],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
}
with open(".data/s3.json", "w") as f:
    json.dump({"identities": [identity]}, f)
PY
  names+=(s3)
  s3_line="$MJHOOK_S3_ENDPOINT (SeaweedFS, key $MJHOOK_S3_ACCESS_KEY, data in .data/s3;"
  s3_line+=" master :9333, volume :8080, filer :8888)"
fi

export UP_INGRESS_PORT=${UP_INGRESS_PORT:-8000}
names+=(ingress worker)
read -r -a extra <<< "${UP_EXTRA:-}"
names+=(${extra[@]+"${extra[@]}"})

if [[ " ${extra[*]+"${extra[*]}"} " == *" sim "* ]]; then
  # The simulator (Procfile `sim`) is the provider: its API, its default key (cli/simulate.py), and
  # its result files on loopback, which the downloader refuses unless allowed.
  if [ -z "${MJHOOK_PROVIDER_URL:-}" ]; then
    export MJHOOK_PROVIDER_URL=http://127.0.0.1:8090 MJHOOK_PROVIDER_API_KEY=sim-api-key
    chosen+=(MJHOOK_PROVIDER_URL MJHOOK_PROVIDER_API_KEY)
  fi
  export MJHOOK_FETCH_ALLOW="127.0.0.1${MJHOOK_FETCH_ALLOW:+,$MJHOOK_FETCH_ALLOW}"
  # Callbacks as the ingress checks them: signed with its first webhook key, when it has one
  # (Procfile `sim`; scripts/demo_load.sh sends the first callback token).
  UP_SIM_HMAC_KEY=$("$VENV/bin/python" -c 'import sys
from shared.settings import comma_list
print(next(iter(comma_list(sys.argv[1])), ""))' "${MJHOOK_WEBHOOK_HMAC_KEY:-}")
  export UP_SIM_HMAC_KEY
fi

echo "redis    $redis_line"
echo "s3       $s3_line, bucket ${MJHOOK_S3_BUCKET:-midjourney}"
echo "ingress  http://127.0.0.1:$UP_INGRESS_PORT (GET /healthz)"
echo "worker   python -m workers workers.tasks (metrics: http://127.0.0.1:${MJHOOK_WORKER_METRICS_PORT:-9191}/metrics)"
for name in ${extra[@]+"${extra[@]}"}; do
  echo "$(printf '%-8s' "$name") $(sed -n "s/^$name: //p" Procfile)"
done
[ -z "${MJHOOK_PROVIDER_URL:-}" ] || echo "provider $MJHOOK_PROVIDER_URL"
exports=""
for name in "${chosen[@]}"; do
  exports+=" $name=$(printf '%q' "${!name}")"
done
echo "mjhook   in another shell (mjhook simulate load, mjhook get ...), first: export$exports"
echo "         and . $VENV/bin/activate (or call $VENV/bin/mjhook)"
echo "starting: ${names[*]}"
# honcho stops the stack on SIGINT (Ctrl-C) and SIGTERM, but dies of a SIGHUP (a closed terminal,
# a lost SSH session) and leaves every process running (each in a session of its own). So honcho
# ignores SIGHUP, and this shell turns one into a SIGTERM for it, then waits until it stopped all.
# Its output goes through a relay that ignores failed writes: after a hangup every write to the
# terminal fails (EIO), and honcho, printing "SIGTERM received" first, would die of that instead.
relay_dir=$(mktemp -d)
mkfifo "$relay_dir/out"
trap '' HUP
(
  trap '' INT  # it goes on relaying honcho's last lines after a Ctrl-C, until honcho closes
  while IFS= read -r line || [ -n "$line" ]; do
    printf '%s\n' "$line" 2>/dev/null || true
  done < "$relay_dir/out"
) &
relay_pid=$!
# The hangup's trap is set before honcho starts, so that a hangup just then is not lost (it was set
# after, and a hangup in between stopped nothing); honcho itself starts with SIGHUP ignored.
honcho_pid=""
hangup=""
trap 'hangup=1; [ -z "$honcho_pid" ] || kill -TERM "$honcho_pid" 2>/dev/null || true' HUP TERM
(
  trap '' HUP
  exec honcho start -e /dev/null -f Procfile "${names[@]}"
) > "$relay_dir/out" 2>&1 &
honcho_pid=$!
[ -z "$hangup" ] || kill -TERM "$honcho_pid" 2>/dev/null || true
trap '' INT  # Ctrl-C reaches honcho itself (this shell's process group); this shell waits for it
status=0
# `wait` returns early when a trap ran: wait again until honcho is gone.
while kill -0 "$honcho_pid" 2>/dev/null; do
  wait "$honcho_pid" && status=0 || status=$?
done
wait "$relay_pid" 2>/dev/null || true
rm -rf "$relay_dir"
exit "$status"
