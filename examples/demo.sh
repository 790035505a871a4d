#!/usr/bin/env bash
# `make demo`: start the Twilio simulator and the runtime in a temporary
# directory, connect a tenant to the simulator the way an operator would,
# and run an example agent session (examples/agent_session.lua) through
# all seven Twilio tools. Nothing leaves this machine: every Twilio host
# points at the simulator on 127.0.0.1. Exits 0 when the session went as
# expected; stops everything it started. SB_KEEP_DEMO=1 keeps the
# directory (logs, database) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${SB_BIN:-$ROOT/switchboard}
DIR=$(mktemp -d /tmp/switchboard-demo.XXXXXX)
CONF=$DIR/switchboard.conf.lua
SIM_PID=""
SRV_PID=""

ACCOUNT=AC00000000000000000000000000000001     # the simulator's "Acme Clinic"
KEY=SK00000000000000000000000000000001
SECRET=acme-main-secret-000000000000001        # fictional, from tests/fixtures/sim.lua
VERIFY=VA00000000000000000000000000000001

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi

stop() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  stop "$SRV_PID"
  stop "$SIM_PID"
  if [ -n "${SB_KEEP_DEMO:-}" ]; then echo "kept: $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # seconds, description, test command...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 20))); do "$@" && return 0; sleep 0.05; done
  echo "timed out waiting for $what" >&2
  return 1
}

admin() { "$BIN" admin --config "$CONF" "$@"; }

[ -x "$BIN" ] || { echo "build first: make" >&2; exit 1; }

say "Starting the Twilio simulator"
"$BIN" sim --port 0 --port-file "$DIR/sim.port" >"$DIR/sim.log" 2>&1 &
SIM_PID=$!
wait_for 10 "the simulator" test -s "$DIR/sim.port" || { cat "$DIR/sim.log" >&2; exit 1; }
PORT=$(cat "$DIR/sim.port")
SIM=http://127.0.0.1:$PORT
echo "simulator on $SIM (fixture tests/fixtures/sim.lua)"

say "Starting switchboard serve"
cat >"$CONF" <<EOF
return {
  data_dir = "$DIR/data",
  agent_socket = "$DIR/agent.sock",
  admin_socket = "$DIR/admin.sock",
  master_key_file = "$DIR/data/master.key",
  log = { level = "info", file = "$DIR/switchboard.log" },
  -- the demo texts one patient several times within ten minutes
  policy_settings = { recipients = { per_recipient = 10 } },
}
EOF
"$BIN" serve --config "$CONF" >"$DIR/serve.log" 2>&1 &
SRV_PID=$!
wait_for 15 "the runtime" test -S "$DIR/agent.sock" -a -S "$DIR/admin.sock" || { cat "$DIR/serve.log" >&2; exit 1; }
echo "agent socket $DIR/agent.sock"

say "Operator: a tenant, its Twilio connection (to the simulator) and an agent"
admin tenant add acme >/dev/null
admin tenant features acme +custom.twilio >/dev/null
echo "\$ switchboard admin twilio connect --tenant acme --account-sid $ACCOUNT --api-key-sid $KEY ... --hosts $SIM"
printf '%s' "$SECRET" | admin twilio connect --tenant acme --account-sid "$ACCOUNT" --api-key-sid "$KEY" \
  --default-number +14155550100 --whatsapp-number +14155238886 --verify-service-sid "$VERIFY" --hosts "$SIM"
TOKEN=$(admin --json agent add --tenant acme --name assistant --type caioo --tier owner \
  --groups "Twilio Communications" | sed -n 's/.*"token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
[ -n "$TOKEN" ] || { echo "agent add gave no token" >&2; exit 1; }
echo "agent 'assistant' added (token ${TOKEN:0:8}…)"
admin twilio autonomous-sends on --tenant acme --confirm

say "Agent: an MCP session through all seven tools"
SWITCHBOARD_SOCKET=$DIR/agent.sock SWITCHBOARD_TOKEN=$TOKEN SIM_URL=$SIM \
  "$BIN" exec "$ROOT/examples/agent_session.lua"
status=$?

say "What the operator sees afterwards"
admin twilio messages --tenant acme --page-size 5 || true
exit $status
