#!/usr/bin/env bash
# The whole system on one machine, on the embedded SQLite default: a control plane,
# three enrolled daemons, each with its own state dir, a key rotation on one of them
# (its live stream kept), and the views an operator uses.
# Stays up until Ctrl-C, then stops everything it started. `--once` stops after the
# checks instead (the test suite runs it that way to keep this script true).
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
[ "${1:-}" = "--once" ] && once=true

demo=${AEGIS_DEMO_DIR:-$PWD/.demo}
rm -rf "$demo"
mkdir -p "$demo"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Commands are captured before grep reads them: with pipefail, `cmd | grep -q` fails
# whenever grep exits at its first match before cmd has written everything (SIGPIPE).
connected() { local out; out=$(aegis edge status --state-dir "$1" 2>/dev/null || true); grep -q '^status: Connected' <<<"$out"; }
fail() { echo "demo: $*" >&2; for f in "$demo"/*.log; do echo "--- $f"; tail -20 "$f"; done >&2; exit 1; }

say "building controlplane, edged and aegisctl (aegis) into ./bin (a first build takes a few minutes)"
# Not -s: each go build line shows which binary is being built.
make --no-print-directory build
export PATH="$PWD/bin:$PATH"
export AEGIS_CONFIG="$demo/aegis.yaml"

# --once (the test suite) takes a random port below Linux's ephemeral range
# (32768-60999), where outgoing connections take theirs, and tries another if it is
# taken anyway; an operator's demo uses 7443 or AEGIS_DEMO_LISTEN and says so.
tries=1
if $once; then tries=5; fi
for attempt in $(seq 1 "$tries"); do
  if $once; then
    listen="127.0.0.1:$((20000 + RANDOM % 12000))"
  else
    listen="${AEGIS_DEMO_LISTEN:-127.0.0.1:7443}"
  fi
  port=${listen##*:}
  if (exec 3<>"/dev/tcp/${listen%:*}/$port") 2>/dev/null; then
    $once && continue
    echo "demo: $listen is already in use (another demo still running?): stop it, or pick another address with AEGIS_DEMO_LISTEN=127.0.0.1:7444 make demo" >&2
    exit 1
  fi

  say "starting the control plane on https://$listen (data in $demo/cp)"
  controlplane serve --listen "$listen" --data-dir "$demo/cp" >"$demo/controlplane.log" 2>&1 &
  cp_pid=$!
  for _ in $(seq 1 100); do
    [ -s "$demo/cp/admin.token" ] && aegis login --server "https://$listen" \
      --token-file "$demo/cp/admin.token" --ca-file "$demo/cp/ca.crt" >"$demo/login.out" 2>&1 && break
    kill -0 "$cp_pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$cp_pid" 2>/dev/null; then
    pids+=("$cp_pid")
    break
  fi
  if $once && [ "$attempt" -lt "$tries" ] && grep -q "address already in use" "$demo/controlplane.log"; then
    say "$listen was taken after all; trying another port"
    continue
  fi
  fail "the control plane exited (if $listen is busy, set AEGIS_DEMO_LISTEN=127.0.0.1:PORT)"
done
[ ${#pids[@]} -gt 0 ] || fail "no free port for the control plane after $tries tries"
grep -q "logged in" "$demo/login.out" || fail "could not log in: $(cat "$demo/login.out")"
cat "$demo/login.out"

hosts=(web-east-1 web-east-2 db-mirror-1)
for h in "${hosts[@]}"; do
  say "enrolling $h"
  token=$(aegis edge enrollment-tokens create --tags demo,prod --name "$h")
  printf '%s\n' "$token" >>"$demo/secrets.list"
  aegis edge enroll --token "$token" --name "$h" --state-dir "$demo/hosts/$h"
  edged run --state-dir "$demo/hosts/$h" >"$demo/$h.log" 2>&1 &
  pids+=($!)
done

say "waiting for the three daemons to be Connected"
for h in "${hosts[@]}"; do
  for _ in $(seq 1 100); do
    connected "$demo/hosts/$h" && break
    sleep 0.2
  done
  connected "$demo/hosts/$h" || fail "$h did not connect"
done

say "aegis edge status (on web-east-1)"
aegis edge status --state-dir "$demo/hosts/web-east-1"

say "aegis edge hosts list (the operator's view)"
aegis edge hosts list
list=$(aegis edge hosts list); n_connected=$(grep -c Connected <<<"$list" || true)
[ "$n_connected" -eq 3 ] || fail "hosts list shows $n_connected Connected hosts, want 3"

h1="$demo/hosts/web-east-1"
fp() { aegis edge status --state-dir "$h1" | sed -n 's/^key_fingerprint: //p'; }
before=$(fp)
say "aegis edge keys rotate (on web-east-1): a new key and token, the live stream kept"
aegis edge keys rotate --state-dir "$h1"
after=$(fp)
[ -n "$after" ] && [ "$after" != "$before" ] || fail "the fingerprint did not change ($before -> $after)"
connected "$h1" || fail "web-east-1 is not Connected after the rotation"
streams=$(grep -c "connected to the control plane" "$demo/web-east-1.log" || true)
[ "$streams" -eq 1 ] || fail "web-east-1 opened $streams streams, want 1: the rotation must not reconnect"
say "ls $h1/archive (the old key, kept for --keep-old)"
ls "$h1/archive"
say "aegis edge status (on web-east-1, after the rotation)"
aegis edge status --state-dir "$h1"
say "aegis edge hosts list (key_rotated_at is set for web-east-1)"
aegis edge hosts list
list=$(aegis edge hosts list)
grep web-east-1 <<<"$list" | grep -F -- "$after" >/dev/null || fail "hosts list does not show web-east-1's new key"

say "no secret in any log: admin token, enrollment tokens, node tokens, node keys"
cat "$demo/cp/admin.token" >>"$demo/secrets.list"
for h in "${hosts[@]}"; do
  cat "$demo/hosts/$h/node.token" >>"$demo/secrets.list"; echo >>"$demo/secrets.list"
  # The key file is PEM: every base64 line of it is a secret on its own.
  grep -v -- '-----' "$demo/hosts/$h/node.key" >>"$demo/secrets.list"
done
for f in "$h1"/archive/*.key; do grep -v -- '-----' "$f" >>"$demo/secrets.list"; done
# Enrollment and API tokens are <id>.<secret>...: their secret part must not leak either.
parts=$(sed -n 's/^[0-9a-f]\{16\}\.\([0-9a-f]\{32\}\).*/\1/p' "$demo/secrets.list")
printf '%s\n' "$parts" >>"$demo/secrets.list"
leaks=$(grep -v '^$' "$demo/secrets.list" | sort -u | grep -F -f - "$demo"/*.log "$demo"/login.out || true)
[ -z "$leaks" ] || fail "a secret appears in a log: $(echo "$leaks" | cut -d: -f1 | sort -u | tr '\n' ' ')"
echo "checked $(grep -vc '^$' "$demo/secrets.list") secrets against $(ls "$demo"/*.log | wc -l) logs: none found"

if $once; then
  say "demo checks passed"
  exit 0
fi

say "running: logs in $demo/*.log; try AEGIS_CONFIG=$demo/aegis.yaml bin/aegis edge hosts list. Ctrl-C stops everything."
# Wait in a foreground job of its own process group: on a terminal it then holds the
# terminal, so Ctrl-C reaches only it, this script stops everything and exits 0, and
# make (which would report a SIGINT as a failure) never sees the signal.
[ -t 0 ] && set -m
sleep infinity || true
exit 0
