#!/usr/bin/env bash
# Schemathesis against the OpenAPI document a real server serves: builds the debug `confab`,
# starts `confab serve` on a fresh database (SQLite, then PostgreSQL when one answers on
# 127.0.0.1:5432) on a free port without rate limits, seeds users, conversations and messages
# so that real ids exist, and runs Schemathesis with a fixed seed. Checks: no 5xx, responses
# match the documented schemas, statuses and content types are documented.
#
# usage: scripts/schemathesis.sh [max-examples per operation, default 20] [sqlite|postgres ...]
# SCHEMATHESIS_ARGS are added to the run (e.g. "--report har"). Needs python3 (Schemathesis is
# installed from PyPI into .venv-fuzz/, pinned below).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
SEED=20261122
examples="${1:-20}"
[ $# -gt 0 ] && shift
backends=("$@")
if [ ${#backends[@]} -eq 0 ]; then
  backends=(sqlite)
  if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then backends+=(postgres); fi
fi

venv=.venv-fuzz
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | grep -o '[0-9][0-9.]*$')" != "$SCHEMATHESIS_VERSION" ]; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

echo "== building confab (debug)"
cargo build --quiet --bin confab
confab="$PWD/target/debug/confab"

tmp=$(mktemp -d)
server_pid=""
pg_db=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -n "$pg_db" ]; then psql -h 127.0.0.1 -U postgres -qc "drop database if exists $pg_db" >/dev/null 2>&1 || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

failed=()
for backend in "${backends[@]}"; do
  echo "== schemathesis on $backend"
  case "$backend" in
    sqlite) db_url="sqlite://$tmp/schemathesis.db" ;;
    postgres)
      pg_db="confab_st_$$_$(date +%s)"
      psql -h 127.0.0.1 -U postgres -qc "create database $pg_db" >/dev/null
      db_url="postgres://postgres@127.0.0.1:5432/$pg_db"
      ;;
    *) echo "unknown backend $backend"; exit 2 ;;
  esac
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  base="http://127.0.0.1:$port"
  export CONFAB_DATABASE_URL="$db_url"
  # Messenger syncs started by the run retry an unreachable Graph API for seconds (a closed
  # local port: refused at once, never a timeout), each holding an import slot: with the
  # default of 2 most imports would only be answered 429.
  CONFAB_ADDR="127.0.0.1:$port" CONFAB_RATE_LIMIT_PER_USER=0 CONFAB_RATE_LIMIT_PER_IP=0 \
    CONFAB_SOCKET_RATE_LIMIT=0 CONFAB_IMPORT_JOBS=64 \
    CONFAB_GRAPH_API_URL=http://127.0.0.1:9/v19.0 RUST_LOG="${RUST_LOG:-warn}" \
    "$confab" serve >"$tmp/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS "$base/readyz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log"; exit 1; }
    sleep 0.1
  done
  token=$("$confab" token --server --ttl 2h)

  # Seed: users, a group and a direct conversation with messages; their ids go into the
  # dictionaries Schemathesis draws path parameters and `as` from (half of the time).
  python3 - "$base" "$token" "$tmp/schemathesis.toml" <<'PY'
import json, sys, urllib.request

base, token, out = sys.argv[1:4]

def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")

users = ["u_alice", "u_bob", "u_carol", "u_dave"]
call("PUT", "/v1/users", {"users": [{"id": u, "name": u[2:].title()} for u in users]})
group = call("POST", "/v1/conversations?as=u_alice",
             {"type": "group", "member_ids": ["u_bob", "u_carol"], "name": "Team", "tags": ["vip"]})
direct = call("POST", "/v1/conversations?as=u_alice", {"type": "direct", "member_ids": ["u_bob"]})
messages = []
for i, c in enumerate([group, direct] * 3):
    m = call("POST", f"/v1/conversations/{c['id']}/messages?as=u_alice",
             {"client_id": f"seed-{i}", "text": f"hello {i}"})
    messages.append(m["id"])
call("POST", f"/v1/conversations/{group['id']}/read?as=u_bob", {"seq": 1})

def values(xs):
    return "[" + ", ".join(json.dumps(x) for x in xs) + "]"

# Ids no resource has, which must still be answered cleanly. (Schemathesis 4.32 does not send
# one holding U+0000, even with --generation-allow-x00: tests/api/edge.rs covers that.)
hostile = ["\u00fcml\u00e4ut", "a b", "%2F", "..", "x" * 300]
conversations = [group["id"], direct["id"]] + hostile
messages += hostile
users_and_hostile = users + hostile
pick = lambda d: f'{{ dictionary = "{d}", probability = 0.5 }}'
with open(out, "w") as f:
    f.write(f"""
[dictionaries.conversations]
values = {values(conversations)}
[dictionaries.messages]
values = {values(messages)}
[dictionaries.users]
values = {values(users_and_hostile)}
[dictionaries.actors]
values = {values(["u_alice", "u_bob"])}

[[operations]]
include-path-regex = "^/v1/conversations/\\\\{{id\\\\}}"
parameters = {{ "path.id" = {pick("conversations")}, "path.user_id" = {pick("users")}, "query.as" = {pick("actors")} }}

[[operations]]
include-path-regex = "^/v1/messages/"
parameters = {{ "path.id" = {pick("messages")}, "query.as" = {pick("actors")} }}

[[operations]]
include-path-regex = "^/v1/users/"
parameters = {{ "path.id" = {pick("users")} }}

[[operations]]
include-path-regex = "^/v1/(conversations|sync|unread)$"
parameters = {{ "query.as" = {pick("actors")} }}
""")
PY

  if ! SCHEMATHESIS_HOOKS="$PWD/scripts/schemathesis_hooks.py" "$venv/bin/schemathesis" --config-file "$tmp/schemathesis.toml" run "$base/openapi.json" \
    --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
    --seed "$SEED" --max-examples "$examples" --workers 1 --no-color \
    --suppress-health-check all --generation-database none \
    -H "Authorization: Bearer $token" ${SCHEMATHESIS_ARGS:-}; then
    failed+=("$backend")
    echo "-- server log (last lines)"
    tail -n 30 "$tmp/server.log"
  fi
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  if [ -n "$pg_db" ]; then
    psql -h 127.0.0.1 -U postgres -qc "drop database if exists $pg_db" >/dev/null
    pg_db=""
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "schemathesis found failures on: ${failed[*]}"
  exit 1
fi
echo "schemathesis: ${backends[*]}: no failures"
