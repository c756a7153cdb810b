#!/usr/bin/env bash
# The local stack in the foreground, under honcho (Procfile): Redis and SeaweedFS (S3) unless
# ones are already given, then the ingress and the workers. Ctrl-C stops everything.
#   MJHOOK_REDIS_URL    use this Redis if it answers PING (default redis://127.0.0.1:6379/0)
#   MJHOOK_S3_ENDPOINT  use this S3 instead of starting SeaweedFS on 127.0.0.1:8333
#   UP_EXTRA            more Procfile processes to run too (make demo: "sim demo"); none by default
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"

default_redis_url=redis://127.0.0.1:6379/0
redis_url=${MJHOOK_REDIS_URL:-$default_redis_url}
names=()

if command -v redis-cli >/dev/null 2>&1 && [ "$(redis-cli -u "$redis_url" ping 2>/dev/null)" = PONG ]; then
  redis_line="already running at $redis_url"
elif [ "$redis_url" != "$default_redis_url" ]; then
  echo "up: nothing answers at MJHOOK_REDIS_URL=$redis_url; unset it to start a local Redis" >&2
  exit 1
elif ! command -v redis-server >/dev/null 2>&1; then
  echo "up: redis-server is not installed (apt-get install redis-server)" >&2
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
names+=(ingress worker)
read -r -a extra <<< "${UP_EXTRA:-}"
names+=(${extra[@]+"${extra[@]}"})

echo "redis    $redis_line"
echo "s3       $s3_line, bucket ${MJHOOK_S3_BUCKET:-midjourney}"
echo "ingress  http://127.0.0.1:8000 (GET /healthz)"
echo "worker   dramatiq workers.tasks (metrics: http://127.0.0.1:${MJHOOK_WORKER_METRICS_PORT:-9191}/metrics)"
for name in ${extra[@]+"${extra[@]}"}; do
  echo "$(printf '%-8s' "$name") $(sed -n "s/^$name: //p" Procfile)"
done
echo "starting: ${names[*]}"
exec honcho start -f Procfile "${names[@]}"
