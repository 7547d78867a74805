#!/usr/bin/env bash
# Builds the local Go vulnerability database that scripts/vulncheck.sh gives govulncheck
# (-db file://DIR) and prints DIR. CI reaches the Go module proxy but not vuln.go.dev, so the
# database is made from the module golang.org/x/vulndb at the version pinned below: its
# data/osv/*.json are the OSV entries, and its own cmd/indexdb (run at the same version)
# writes the layout govulncheck reads (index/db.json, index/modules.json, index/vulns.json,
# ID/<id>.json).
#
# To refresh the pin: `go list -m golang.org/x/vulndb@latest` names the newest version;
# put it below and run `bash scripts/vulncheck.sh` (or make test).
#
# The result is cached outside the repository, one directory per version:
# $AEGIS_VULNDB_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/aegis-vulndb.
set -euo pipefail

VULNDB_VERSION=v0.0.0-20261105234957-e22db6528018

cache=${AEGIS_VULNDB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aegis-vulndb}
db=$cache/$VULNDB_VERSION
if [ -f "$db/index/db.json" ]; then
  echo "$db"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "vulndb: building the database from golang.org/x/vulndb@$VULNDB_VERSION (module proxy)" >&2
# Outside any module, so neither go.work nor a go.mod of this repository takes part.
meta=$(cd "$work" && GOWORK=off GOFLAGS=-mod=mod go mod download -json "golang.org/x/vulndb@$VULNDB_VERSION") || {
  echo "vulndb: go mod download golang.org/x/vulndb@$VULNDB_VERSION failed:" >&2
  echo "$meta" >&2
  exit 1
}
src=$(printf '%s\n' "$meta" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
info=$(printf '%s\n' "$meta" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",\{0,1\}$/\1/p')
if [ -z "$src" ] || [ ! -d "$src/data/osv" ]; then
  echo "vulndb: golang.org/x/vulndb@$VULNDB_VERSION has no data/osv (module dir: ${src:-none})" >&2
  exit 1
fi

(cd "$work" && GOWORK=off go run "golang.org/x/vulndb/cmd/indexdb@$VULNDB_VERSION" \
  -vulns "$src/data/osv" -out "$work/db")

# The entries in the repository carry no modification time (vuln.go.dev stamps them when it
# publishes), so the index says 0001-01-01. Stamp it with the pinned commit's time instead,
# which is what govulncheck reports as the database's date.
stamp=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info" 2>/dev/null || true)
if [ -n "$stamp" ]; then
  printf '{"modified":"%s"}' "$stamp" >"$work/db/index/db.json"
fi
# govulncheck reads a file:// database uncompressed; the .gz copies are for HTTP servers.
find "$work/db" -name '*.json.gz' -delete

for f in index/db.json index/modules.json index/vulns.json; do
  [ -s "$work/db/$f" ] || { echo "vulndb: indexdb wrote no $f" >&2; exit 1; }
done

# Another run may have finished first; either copy is the same.
mv -T "$work/db" "$db" 2>/dev/null || [ -f "$db/index/db.json" ]
echo "$db"
