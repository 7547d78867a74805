#!/usr/bin/env bash
# Runs every check and test of the repository. Used by `make test` and by CI.
# PostgreSQL tests run when AEGIS_TEST_POSTGRES_URL is set (CI sets it; a connection
# failure then fails the run).
set -euo pipefail
cd "$(dirname "$0")/.."

modules=(api controlplane edged edged/testbed aegisctl deploy)

step() { printf '\n== %s\n' "$*"; }

step "gofmt"
unformatted=$(gofmt -l "${modules[@]}" | grep -v '/gen/' || true)
if [ -n "$unformatted" ]; then
  echo "not gofmt-formatted:"; echo "$unformatted"; exit 1
fi

step "buf lint, and regenerating changes nothing"
go tool buf lint
go tool buf generate
drift=$(git status --porcelain -- api/gen)
if [ -n "$drift" ]; then
  echo "generated code differs from api/proto (run: go tool buf generate, then commit):"
  echo "$drift"; exit 1
fi

step "each module is tidy and builds alone (edged needs no controlplane, pgx or sqlite)"
for m in "${modules[@]}" tools; do
  (cd "$m" && GOWORK=off go mod tidy -diff >/dev/null) || {
    echo "$m/go.mod is not tidy on its own: cd $m && GOWORK=off go mod tidy"; exit 1
  }
done
for m in "${modules[@]}"; do (cd "$m" && GOWORK=off go build ./...); done

step "aegisctl cross-builds (operators' laptops)"
for target in linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64; do
  GOOS=${target%/*} GOARCH=${target#*/} go build -o /dev/null ./aegisctl/cmd/aegisctl
  echo "ok   aegisctl $target"
done

step "go vet"
for m in "${modules[@]}"; do (cd "$m" && go vet ./...); done
# aegisctl's tests too, as an operator on a Mac or Windows laptop would build them.
for goos in darwin windows; do
  (cd aegisctl && GOOS=$goos go vet ./...) || { echo "aegisctl does not vet for $goos"; exit 1; }
  echo "ok   aegisctl vet $goos"
done

step "staticcheck"
go tool staticcheck ./api/... ./controlplane/... ./edged/... ./edged/testbed/... ./aegisctl/...

step "govulncheck (pinned database from the module proxy; excepted IDs in scripts/vulncheck.sh)"
bash scripts/vulncheck.sh "${modules[@]}"

step "go test"
if [ -n "${AEGIS_TEST_POSTGRES_URL:-}" ]; then
  echo "PostgreSQL tests: on ($AEGIS_TEST_POSTGRES_URL)"
else
  echo "PostgreSQL tests: off (set AEGIS_TEST_POSTGRES_URL to run them)"
fi
# The race detector over the modules whose code runs concurrently; aegisctl's
# end-to-end scripts run the real binaries and gain nothing from it.
# A package that runs long on a loaded machine (deploy/ renders charts and runs promtool;
# the testbed runs real binaries) must not die at go test's default 10 minutes.
go test -race -count=1 -timeout 25m ./api/... ./controlplane/... ./edged/... ./edged/testbed/...
go test -count=1 -timeout 25m ./aegisctl/... ./deploy/...

step "fuzz targets, a few seconds each (the seed corpus runs in go test above)"
# A count, not a duration: with -fuzztime 3s, go1.26's fuzz coordinator can report a bare
# "context deadline exceeded" at the deadline when a starved worker has not yet answered
# (go.dev/issue/75804, fixed in go1.27), which fails the run with no input to blame.
# A count never arms that deadline; on a loaded machine it only runs slower.
fuzztime=${AEGIS_FUZZTIME:-20000x}
while read -r pkg target; do
  go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >/tmp/aegis-fuzz.$$ 2>&1 || {
    cat /tmp/aegis-fuzz.$$; rm -f /tmp/aegis-fuzz.$$
    echo "fuzz target $target in $pkg failed: the failing input is in its testdata/fuzz; fix the code, keep the input"; exit 1
  }
  echo "ok   $pkg $target ($fuzztime)"
done < <(grep -rl --include='*_test.go' '^func Fuzz' api controlplane edged aegisctl |
  while read -r f; do
    for t in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f"); do echo "./$(dirname "$f") $t"; done
  done | sort)
rm -f /tmp/aegis-fuzz.$$

step "the README's demo, run once"
bash scripts/demo.sh --once
