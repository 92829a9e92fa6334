#!/usr/bin/env bash
# Installs Debian's chromium (headless browser for the dashboard tests in
# integration/serve_browser_test.go) when it is missing, and prints
#   export CHROMIUM_PATH=/usr/bin/chromium
# Use: eval "$(deploy/local/chromium.sh)". Idempotent: a second run only
# prints the path.
set -euo pipefail

find_chromium() {
	for c in "${CHROMIUM_PATH:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
		if [ -n "$c" ] && [ -x "$c" ]; then
			echo "$c"
			return 0
		fi
	done
	return 1
}

if ! path=$(find_chromium); then
	sudo=""
	if [ "$(id -u)" != 0 ]; then
		sudo="sudo -n"
	fi
	echo "chromium.sh: installing Debian chromium (apt-get)" >&2
	export DEBIAN_FRONTEND=noninteractive
	# one apt-get at a time: services.sh may be installing beside this (same lock)
	lock=${TMPDIR:-/tmp}/callpipe-apt.lock
	$sudo flock -w 900 "$lock" apt-get update -qq >&2 || true
	$sudo flock -w 900 "$lock" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
	path=$(find_chromium) || { echo "chromium.sh: chromium not found after install" >&2; exit 1; }
fi
"$path" --version >&2 || true
echo "export CHROMIUM_PATH=$path"
