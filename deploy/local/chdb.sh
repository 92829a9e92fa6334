#!/usr/bin/env bash
# deploy/local/chdb.sh — install chDB's libchdb.so (the modern ClickHouse engine,
# in-process) used by integration/clickhouse_chdb_test.go to check that every
# migration and query callpipe issues also runs on current ClickHouse.
#
# Usage:
#   deploy/local/chdb.sh          install (idempotent) and print `export CHDB_LIB_PATH=...`
#   eval "$(deploy/local/chdb.sh)"
#
# Environment:
#   CALLPIPE_CHDB_DIR   install folder (default: $REPO/.state/chdb)
#
# Progress goes to stderr; stdout is only the export line.
set -euo pipefail

PKG=@chdb/lib-linux-x64-gnu
VERSION=26.7.3-stable.1

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
DIR=${CALLPIPE_CHDB_DIR:-$REPO/.state/chdb}
LIB=$DIR/node_modules/$PKG/libchdb.so

installed_version() {
  [ -f "$DIR/node_modules/$PKG/package.json" ] || return 1
  node -e 'process.stdout.write(require(process.argv[1]).version)' "$DIR/node_modules/$PKG/package.json"
}

if [ "$(installed_version 2>/dev/null || true)" != "$VERSION" ] || [ ! -f "$LIB" ]; then
  command -v npm >/dev/null || { echo "chdb.sh: npm is required (apt-get install -y npm)" >&2; exit 1; }
  mkdir -p "$DIR"
  [ -f "$DIR/package.json" ] || echo '{"name":"callpipe-chdb","private":true}' >"$DIR/package.json"
  echo "chdb.sh: installing $PKG@$VERSION into $DIR (~180 MB download)" >&2
  npm install --prefix "$DIR" --no-audit --no-fund --no-save --loglevel=error "$PKG@$VERSION" >&2
fi
if [ ! -f "$LIB" ]; then
  found=$(find "$DIR/node_modules/$PKG" -name 'libchdb.so' -print -quit 2>/dev/null || true)
  [ -n "$found" ] || { echo "chdb.sh: libchdb.so not found under $DIR/node_modules/$PKG" >&2; exit 1; }
  LIB=$found
fi
echo "export CHDB_LIB_PATH=$LIB"
