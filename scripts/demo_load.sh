#!/usr/bin/env bash
# make demo's one-shot load (Procfile `demo`, run by scripts/up.sh under honcho): submit a few
# tasks to the provider simulator (Procfile `sim`) with the local ingress as callBackUrl, wait
# until the workers have stored them, and say where to look. Then it idles, so that honcho keeps
# the stack running until Ctrl-C (honcho stops everything when one process exits).
#   DEMO_TASKS       how many 4-image grids to submit (default 3)
#   UP_INGRESS_PORT  the ingress's port on 127.0.0.1 (scripts/up.sh sets it; default 8000)
#   MJHOOK_CALLBACK_TOKEN  the ingress's callback tokens: the callbacks carry the first
set -uo pipefail
sim_url=http://127.0.0.1:8090
ingress_url=http://127.0.0.1:${UP_INGRESS_PORT:-8000}
# With ?token= the first of MJHOOK_CALLBACK_TOKEN, when the ingress asks for one.
callback_url=$ingress_url/callbacks/midjourney$(python -c 'import sys
from urllib.parse import quote
from shared.settings import comma_list
token = next(iter(comma_list(sys.argv[1])), "")
print("?token=" + quote(token, safe="") if token else "")' "${MJHOOK_CALLBACK_TOKEN:-}")
# The simulator's default key (cli/simulate.py), the one scripts/up.sh gives the stack.
api_key=sim-api-key
count=${DEMO_TASKS:-3}
# How long the workers get to store everything, seconds.
store_timeout_s=90

idle() { exec sleep infinity; }

wait_for() {  # URL WHAT: until anything answers HTTP at URL, at most 60 s
  for _ in $(seq 120); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.5
  done
  echo "demo: $2 does not answer at $1; no load sent" >&2
  idle
}

wait_for "$ingress_url/healthz" ingress
wait_for "$sim_url/api/v1/mj/record-info" simulator

task_ids=()
for n in $(seq "$count"); do
  answer=$(curl -s "$sim_url/api/v1/mj/generate" -H "Authorization: Bearer $api_key" \
    -H 'Content-Type: application/json' \
    -d "{\"taskType\": \"mj_txt2img\", \"prompt\": \"demo $n: a lighthouse at golden hour\", \"callBackUrl\": \"$callback_url\"}")
  task_id=$(printf '%s' "$answer" | python -c 'import json, sys; print(json.load(sys.stdin)["data"]["taskId"])') || {
    echo "demo: the simulator refused the task: $answer" >&2
    idle
  }
  task_ids+=("$task_id")
done
echo "demo: submitted ${task_ids[*]} (4 images each); waiting for them to be stored ..."

ids=$(IFS=,; echo "${task_ids[*]}")
check='import json, sys
wanted = set(sys.argv[1].split(","))
states = {t["taskId"]: t["state"] for t in json.load(sys.stdin) if t["taskId"] in wanted}
print(" ".join(t + "=" + states.get(t, "-") for t in sorted(wanted)))
sys.exit(0 if len(states) == len(wanted) and set(states.values()) <= {"stored", "partial", "failed"} else 1)'
deadline=$((SECONDS + store_timeout_s))
until line=$(mjhook tasks --json --limit 100 | python -c "$check" "$ids"); do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "demo: not all stored after ${store_timeout_s} s: $line (see the worker log above)" >&2
    idle
  fi
  sleep 2
done
cat <<MSG
demo: done: $line
demo: where to look, in another terminal in $(pwd), after
demo:   export $(env | grep -E '^MJHOOK_(REDIS_URL|S3_ENDPOINT|S3_ACCESS_KEY|S3_SECRET_KEY|S3_BUCKET|PROVIDER_URL|PROVIDER_API_KEY)=' | sort | tr '\n' ' ')
demo:   .venv/bin/mjhook tasks                   # recent tasks and their state
demo:   .venv/bin/mjhook get ${task_ids[0]}   # download its files and manifest.json, sha256-checked
demo:   .venv/bin/mjhook status                  # queue, workers, states per minute
demo: the bucket is ${MJHOOK_S3_BUCKET:-midjourney} at ${MJHOOK_S3_ENDPOINT:-?}: tasks/<taskId>/0.png .. 3.png + manifest.json
demo: the simulator keeps serving on $sim_url (Bearer $api_key); Ctrl-C stops everything.
MSG
idle
