#!/usr/bin/env bash
# deploy/local/services.sh — run callpipe's backing services (NATS JetStream,
# ClickHouse, MinIO, Redis) as plain loopback daemons, without Docker.
#
# Usage:
#   services.sh up                 install what is missing, start all, write + print the env file
#   services.sh down               stop all services
#   services.sh env                print the env file (export lines; `eval "$(services.sh env)"`)
#   services.sh status             show each service (exit 1 if any is not running + healthy)
#   services.sh start   [SERVICE...]   start (installing if needed) the named services (default: all)
#   services.sh stop    [SERVICE...]   stop the named services (default: all)
#   services.sh restart [SERVICE...]   stop, then start
#   services.sh install [SERVICE...]   only install what is missing
# SERVICE is one of: nats clickhouse minio redis
#
# Environment:
#   CALLPIPE_STATE_DIR          state folder (default: $REPO/.state/services)
#   CALLPIPE_SERVICES_TIMEOUT   seconds to wait for a service to become healthy (default 60)
#   CALLPIPE_SERVICES_PORT_OFFSET  added to every port (default 0: NATS 14222, ClickHouse 19000/18123,
#                               MinIO 19100/19101, Redis 16379)
#   CALLPIPE_SERVICES_JETSTREAM_ENCRYPT  1: JetStream encrypts its store (ChaCha20-Poly1305) under a key
#                               generated once into the state folder (default 0). Turn it on for a fresh
#                               state folder: a store written in clear is not converted.
#
# Everything (data, config, logs, pid files, generated MinIO credentials, env file) lives in the
# state folder. The commands are idempotent: `up` on running, healthy services reuses them.
set -euo pipefail
set +m

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
STATE=${CALLPIPE_STATE_DIR:-$REPO/.state/services}
TIMEOUT=${CALLPIPE_SERVICES_TIMEOUT:-60}
STOP_TIMEOUT=30

HOST=127.0.0.1
# CALLPIPE_SERVICES_PORT_OFFSET shifts every port, so that several independent stacks (each with
# its own CALLPIPE_STATE_DIR) can run side by side, e.g. for outage tests that stop a service.
PORT_OFFSET=${CALLPIPE_SERVICES_PORT_OFFSET:-0}
[[ $PORT_OFFSET =~ ^[0-9]+$ ]] || { echo "CALLPIPE_SERVICES_PORT_OFFSET must be a number, got '$PORT_OFFSET'" >&2; exit 2; }
NATS_PORT=$((14222 + PORT_OFFSET))
NATS_MONITOR_PORT=$((18222 + PORT_OFFSET))
CH_TCP_PORT=$((19000 + PORT_OFFSET))
CH_HTTP_PORT=$((18123 + PORT_OFFSET))
MINIO_PORT=$((19100 + PORT_OFFSET))
MINIO_CONSOLE_PORT=$((19101 + PORT_OFFSET))
REDIS_PORT=$((16379 + PORT_OFFSET))

NATS_MODULE=github.com/nats-io/nats-server/v2
NATS_VERSION=v2.15.2
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c

ALL_SERVICES=(nats clickhouse minio redis)

JETSTREAM_ENCRYPT=${CALLPIPE_SERVICES_JETSTREAM_ENCRYPT:-0}
[[ $JETSTREAM_ENCRYPT == 0 || $JETSTREAM_ENCRYPT == 1 ]] || { echo "CALLPIPE_SERVICES_JETSTREAM_ENCRYPT must be 0 or 1, got '$JETSTREAM_ENCRYPT'" >&2; exit 2; }

log() { printf '[services] %s\n' "$*" >&2; }
die() {
	printf '[services] ERROR: %s\n' "$*" >&2
	exit 1
}

# ---------------------------------------------------------------------------
# helpers

# pid_alive PID: process exists and is not a zombie.
pid_alive() {
	local pid=$1 stat
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

# http_ok PORT PATH: GET http://127.0.0.1:PORT/PATH answers 200 (pure bash, no curl needed).
http_ok() (
	exec 3<>"/dev/tcp/$HOST/$1" || exit 1
	printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$2" "$HOST" "$1" >&3
	IFS= read -r -t 3 line <&3 || exit 1
	[[ $line =~ ^HTTP/[0-9.]+\ 200 ]]
) 2>/dev/null

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# run_root CMD...: run as root (directly, or via sudo).
run_root() {
	if ((EUID == 0)); then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

find_bin() { # find_bin NAME: print the path of NAME (PATH, then sbin dirs)
	local name=$1 d
	if command -v "$name" >/dev/null 2>&1; then
		command -v "$name"
		return 0
	fi
	for d in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin; do
		[[ -x $d/$name ]] && {
			echo "$d/$name"
			return 0
		}
	done
	return 1
}

GOBIN_DIR=
gobin_dir() {
	if [[ -z $GOBIN_DIR ]]; then
		local gopath
		if command -v go >/dev/null 2>&1; then
			gopath=$(GOFLAGS= go env GOPATH)
		else
			gopath=${GOPATH:-$HOME/go}
		fi
		GOBIN_DIR=${gopath%%:*}/bin
	fi
	echo "$GOBIN_DIR"
}

# go_bin_ok BIN MODULE VERSION: BIN exists and was built from MODULE@VERSION.
go_bin_ok() {
	[[ -x $1 ]] || return 1
	command -v go >/dev/null 2>&1 || return 0 # cannot check; trust it
	local mv
	mv=$(GOFLAGS= go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $2 "@" $3; exit }') || true
	[[ $mv == "$2@$3" ]]
}

svc_valid() {
	case $1 in nats | clickhouse | minio | redis) return 0 ;; esac
	return 1
}

svc_dir() { echo "$STATE/$1"; }
svc_pidfile() { echo "$STATE/$1/$1.pid"; }
svc_log() { echo "$STATE/$1/$1.log"; }

svc_ports() {
	case $1 in
	nats) echo "$NATS_PORT $NATS_MONITOR_PORT" ;;
	clickhouse) echo "$CH_TCP_PORT $CH_HTTP_PORT" ;;
	minio) echo "$MINIO_PORT $MINIO_CONSOLE_PORT" ;;
	redis) echo "$REDIS_PORT" ;;
	esac
}

svc_url() {
	case $1 in
	nats) echo "nats://$HOST:$NATS_PORT (monitor http://$HOST:$NATS_MONITOR_PORT)" ;;
	clickhouse) echo "native $HOST:$CH_TCP_PORT, http://$HOST:$CH_HTTP_PORT" ;;
	minio) echo "http://$HOST:$MINIO_PORT" ;;
	redis) echo "redis://$HOST:$REDIS_PORT" ;;
	esac
}

svc_binname() {
	case $1 in
	nats) echo nats-server ;;
	clickhouse) echo clickhouse-server ;;
	minio) echo minio ;;
	redis) echo redis-server ;;
	esac
}

svc_bin() {
	case $1 in
	nats | minio) echo "$(gobin_dir)/$(svc_binname "$1")" ;;
	*) find_bin "$(svc_binname "$1")" ;;
	esac
}

svc_healthy() {
	case $1 in
	nats) http_ok "$NATS_MONITOR_PORT" '/healthz?js-enabled-only=true' ;;
	clickhouse) http_ok "$CH_HTTP_PORT" /ping ;;
	minio) http_ok "$MINIO_PORT" /minio/health/ready ;;
	redis)
		local cli out
		if cli=$(find_bin redis-cli); then
			out=$(timeout 5 "$cli" -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) || return 1
			[[ $out == PONG ]]
		else
			(
				exec 3<>"/dev/tcp/$HOST/$REDIS_PORT" || exit 1
				printf 'PING\r\n' >&3
				IFS= read -r -t 3 out <&3 || exit 1
				[[ ${out%$'\r'} == +PONG ]]
			) 2>/dev/null
		fi
		;;
	esac
}

# svc_pid SERVICE: print the pid if the service's recorded process is alive (and is the right binary).
svc_pid() {
	local pf pid cmdline
	pf=$(svc_pidfile "$1")
	[[ -f $pf ]] || return 1
	pid=$(<"$pf")
	pid_alive "$pid" || return 1
	cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	[[ $cmdline == *"$(svc_binname "$1")"* ]] || return 1
	echo "$pid"
}

# ---------------------------------------------------------------------------
# state + config

init_state() {
	mkdir -p "$STATE"
	STATE=$(cd "$STATE" && pwd) # absolute
	chmod 700 "$STATE" 2>/dev/null || true
	local s
	for s in "${ALL_SERVICES[@]}"; do mkdir -p "$STATE/$s"; done
}

# MinIO root credentials: generated randomly once, kept in the state folder.
ensure_minio_credentials() {
	local f=$STATE/minio/credentials
	if [[ ! -s $f ]]; then
		local user pass
		user=callpipe$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
		pass=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
		(
			umask 077
			printf 'MINIO_ROOT_USER=%s\nMINIO_ROOT_PASSWORD=%s\n' "$user" "$pass" >"$f.tmp"
		)
		mv "$f.tmp" "$f"
	fi
	MINIO_ROOT_USER=$(sed -n 's/^MINIO_ROOT_USER=//p' "$f")
	MINIO_ROOT_PASSWORD=$(sed -n 's/^MINIO_ROOT_PASSWORD=//p' "$f")
	[[ -n $MINIO_ROOT_USER && -n $MINIO_ROOT_PASSWORD ]] || die "bad MinIO credentials file $f (delete it to regenerate)"
}

# Settings key of the local stack (langfuse.settings_key): generated once, kept in the state folder,
# so that serve and the langfuse workers started with the env file share it.
ensure_settings_key() {
	local f=$STATE/settings.key
	if [[ ! -s $f ]]; then
		(
			umask 077
			head -c 32 /dev/urandom | base64 >"$f.tmp"
		)
		mv "$f.tmp" "$f"
	fi
	SETTINGS_KEY=$(<"$f")
}

write_env() {
	ensure_minio_credentials
	ensure_settings_key
	local f=$STATE/env
	(
		umask 077
		{
			echo "# generated by deploy/local/services.sh; use: . $(printf '%q' "$f")  or  eval \"\$(deploy/local/services.sh env)\""
			echo "export CALLPIPE_SERVICES_MANAGED=1"
			printf 'export CALLPIPE_STATE_DIR=%q\n' "$STATE"
			printf 'export CALLPIPE_SERVICES_SCRIPT=%q\n' "$SCRIPT_DIR/services.sh"
			echo "export CALLPIPE_SERVICES_PORT_OFFSET=$PORT_OFFSET"
			echo "export CALLPIPE_NATS_URL=nats://$HOST:$NATS_PORT"
			echo "export CALLPIPE_CLICKHOUSE_ADDR=$HOST:$CH_TCP_PORT"
			echo "export CALLPIPE_CLICKHOUSE_HTTP_ADDR=$HOST:$CH_HTTP_PORT"
			echo "export CALLPIPE_S3_ENDPOINT=$HOST:$MINIO_PORT"
			echo "export CALLPIPE_S3_ACCESS_KEY=$MINIO_ROOT_USER"
			echo "export CALLPIPE_S3_SECRET_KEY=$MINIO_ROOT_PASSWORD"
			echo "export CALLPIPE_S3_USE_SSL=false"
			echo "export CALLPIPE_REDIS_ADDR=$HOST:$REDIS_PORT"
			echo "export CALLPIPE_LANGFUSE_SETTINGS_KEY=$SETTINGS_KEY"
		} >"$f.tmp"
	)
	mv "$f.tmp" "$f"
}

# JetStream store key: generated randomly once, kept in the state folder (mode 0600). nats.conf names
# it as $CALLPIPE_JETSTREAM_KEY, which the daemon gets in its environment, so the key is in no
# configuration file and on no command line.
ensure_jetstream_key() {
	local f=$STATE/nats/jetstream.key
	if [[ ! -s $f ]]; then
		(
			umask 077
			head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f.tmp"
		)
		mv "$f.tmp" "$f"
	fi
	JETSTREAM_KEY=$(<"$f")
}

write_nats_config() {
	local d=$STATE/nats encryption=
	mkdir -p "$d/jetstream"
	if ((JETSTREAM_ENCRYPT)); then
		encryption=$'\n  cipher: chachapoly\n  key: $CALLPIPE_JETSTREAM_KEY'
	fi
	cat >"$d/nats.conf" <<EOF
# generated by deploy/local/services.sh
server_name: callpipe-local
listen: $HOST:$NATS_PORT
http: $HOST:$NATS_MONITOR_PORT
jetstream {
  store_dir: "$d/jetstream"$encryption
}
EOF
}

write_clickhouse_config() {
	local d=$STATE/clickhouse
	mkdir -p "$d/data" "$d/tmp" "$d/log" "$d/user_files" "$d/format_schemas"
	# No interserver_http_port: without it ClickHouse does not open the interserver listener.
	cat >"$d/config.xml" <<EOF
<?xml version="1.0"?>
<!-- generated by deploy/local/services.sh -->
<yandex>
    <logger>
        <level>information</level>
        <log>$d/log/clickhouse-server.log</log>
        <errorlog>$d/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>$HOST</listen_host>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$d/data/</path>
    <tmp_path>$d/tmp/</tmp_path>
    <user_files_path>$d/user_files/</user_files_path>
    <format_schema_path>$d/format_schemas/</format_schema_path>
    <users_config>$d/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <umask>027</umask>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
EOF
	cat >"$d/users.xml" <<EOF
<?xml version="1.0"?>
<!-- generated by deploy/local/services.sh -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>
        </default>
        <readonly>
            <readonly>1</readonly>
        </readonly>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks replace="replace">
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
}

# svc_command SERVICE: fill the CMD array with the daemon's command line.
svc_command() {
	local bin
	bin=$(svc_bin "$1") || die "$1: binary $(svc_binname "$1") not found (run: $0 install $1)"
	[[ -x $bin ]] || die "$1: $bin is not installed (run: $0 install $1)"
	case $1 in
	nats)
		write_nats_config
		CMD=("$bin" -c "$STATE/nats/nats.conf")
		if ((JETSTREAM_ENCRYPT)); then
			ensure_jetstream_key
			CMD=(env "CALLPIPE_JETSTREAM_KEY=$JETSTREAM_KEY" "${CMD[@]}")
		fi
		;;
	clickhouse)
		write_clickhouse_config
		CMD=("$bin" "--config-file=$STATE/clickhouse/config.xml")
		;;
	minio)
		ensure_minio_credentials
		mkdir -p "$STATE/minio/data"
		CMD=(env "MINIO_ROOT_USER=$MINIO_ROOT_USER" "MINIO_ROOT_PASSWORD=$MINIO_ROOT_PASSWORD"
			MINIO_BROWSER=off MINIO_UPDATE=off
			"$bin" server "$STATE/minio/data"
			--address "$HOST:$MINIO_PORT" --console-address "$HOST:$MINIO_CONSOLE_PORT" --quiet)
		;;
	redis)
		mkdir -p "$STATE/redis/data"
		CMD=("$bin" --bind "$HOST" --port "$REDIS_PORT" --save "" --appendonly no
			--dir "$STATE/redis/data" --daemonize no --protected-mode yes)
		;;
	esac
}

# ---------------------------------------------------------------------------
# install

install_go_tool() { # install_go_tool NAME MODULE VERSION
	local name=$1 mod=$2 ver=$3 bin t0
	bin=$(gobin_dir)/$name
	if go_bin_ok "$bin" "$mod" "$ver"; then
		return 0
	fi
	command -v go >/dev/null 2>&1 || die "go is not on PATH; needed to install $mod@$ver"
	log "installing $name: go install $mod@$ver (MinIO takes ~5-7 min on a fresh machine) ..."
	t0=$SECONDS
	if ! GOFLAGS= GOBIN=$(gobin_dir) go install "$mod@$ver" >"$STATE/install-$name.log" 2>&1; then
		tail -n 30 "$STATE/install-$name.log" >&2
		die "go install $mod@$ver failed (full log: $STATE/install-$name.log)"
	fi
	go_bin_ok "$bin" "$mod" "$ver" || die "go install $mod@$ver did not produce $bin"
	log "installed $name in $((SECONDS - t0))s"
}

install_apt() { # install_apt PKG...
	local pkgs=("$@") t0 p need_update=0
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${pkgs[*]} by hand (Debian/Ubuntu expected)"
	for p in "${pkgs[@]}"; do
		if ! apt-cache show "$p" >/dev/null 2>&1; then need_update=1; fi
	done
	t0=$SECONDS
	if ((need_update)); then
		log "apt-get update ..."
		run_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$STATE/install-apt.log" 2>&1 ||
			{ tail -n 20 "$STATE/install-apt.log" >&2; die "apt-get update failed"; }
	fi
	log "apt-get install ${pkgs[*]} ..."
	if ! run_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$STATE/install-apt.log" 2>&1; then
		if ((need_update)); then
			tail -n 20 "$STATE/install-apt.log" >&2
			die "apt-get install ${pkgs[*]} failed (log: $STATE/install-apt.log)"
		fi
		log "apt-get install failed; retrying after apt-get update ..."
		run_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$STATE/install-apt.log" 2>&1 &&
			run_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$STATE/install-apt.log" 2>&1 ||
			{ tail -n 20 "$STATE/install-apt.log" >&2; die "apt-get install ${pkgs[*]} failed (log: $STATE/install-apt.log)"; }
	fi
	log "installed ${pkgs[*]} in $((SECONDS - t0))s"
}

# ensure_installed SERVICE...: install what the given services need (apt and go install run in parallel).
ensure_installed() {
	local s apt_pkgs=() go_jobs=() rc=0 pid
	for s in "$@"; do
		case $s in
		clickhouse)
			find_bin clickhouse-server >/dev/null || apt_pkgs+=(clickhouse-server)
			find_bin clickhouse-client >/dev/null || apt_pkgs+=(clickhouse-client)
			;;
		redis)
			find_bin redis-server >/dev/null || apt_pkgs+=(redis-server)
			find_bin redis-cli >/dev/null || apt_pkgs+=(redis-tools)
			;;
		esac
	done
	for s in "$@"; do
		case $s in
		minio)
			if ! go_bin_ok "$(gobin_dir)/minio" "$MINIO_MODULE" "$MINIO_VERSION"; then
				install_go_tool minio "$MINIO_MODULE" "$MINIO_VERSION" &
				go_jobs+=($!)
			fi
			;;
		nats)
			if ! go_bin_ok "$(gobin_dir)/nats-server" "$NATS_MODULE" "$NATS_VERSION"; then
				install_go_tool nats-server "$NATS_MODULE" "$NATS_VERSION" &
				go_jobs+=($!)
			fi
			;;
		esac
	done
	if ((${#apt_pkgs[@]})); then
		install_apt "${apt_pkgs[@]}" || rc=1
	fi
	for pid in "${go_jobs[@]}"; do
		wait "$pid" || rc=1
	done
	((rc == 0)) || die "installation failed"
}

# ---------------------------------------------------------------------------
# start / stop

# show_logs SERVICE: print the tail of the service's log(s) to stderr.
show_logs() {
	local f
	for f in "$(svc_log "$1")" "$STATE/$1/log/clickhouse-server.err.log"; do
		[[ -s $f ]] || continue
		log "last 40 lines of $f:"
		tail -n 40 "$f" >&2 || true
	done
}

wait_healthy() { # wait_healthy SERVICE PID
	local s=$1 pid=$2 deadline=$((SECONDS + TIMEOUT))
	while ((SECONDS < deadline)); do
		if svc_healthy "$s"; then
			return 0
		fi
		if ! pid_alive "$pid"; then
			show_logs "$s"
			die "$s (pid $pid) exited during startup: see the log above"
		fi
		sleep 0.1
	done
	show_logs "$s"
	die "$s (pid $pid) did not become healthy within ${TIMEOUT}s (CALLPIPE_SERVICES_TIMEOUT): see the log above"
}

start_service() {
	local s=$1 pid port logf t0
	logf=$(svc_log "$s")
	if pid=$(svc_pid "$s"); then
		wait_healthy "$s" "$pid"
		log "$s already running (pid $pid), healthy: $(svc_url "$s")"
		return 0
	fi
	rm -f "$(svc_pidfile "$s")"
	for port in $(svc_ports "$s"); do
		if port_open "$port"; then
			die "$s: port $HOST:$port is already in use by a process not managed from $STATE (check: ss -ltnp 'sport = :$port')"
		fi
	done
	local CMD=()
	svc_command "$s"
	t0=$(date +%s.%N)
	{
		echo "=== $(date -u +%FT%TZ) starting $s: ${CMD[*]}" | sed -E 's/(MINIO_ROOT_PASSWORD=|CALLPIPE_JETSTREAM_KEY=)[^ ]*/\1***/g'
	} >>"$logf"
	(
		# Do not leak inherited descriptors (the state lock on fd 9, callers' pipes) into the daemon:
		# a daemon holding a caller's pipe open makes that caller wait forever for EOF.
		local fd n
		for fd in /proc/$BASHPID/fd/*; do
			n=${fd##*/}
			if [[ $n =~ ^[0-9]+$ ]] && ((n > 2)); then eval "exec $n>&-" 2>/dev/null || true; fi
		done
		cd "$(svc_dir "$s")"
		exec setsid nohup "${CMD[@]}" >>"$logf" 2>&1 </dev/null
	) &
	pid=$!
	echo "$pid" >"$(svc_pidfile "$s")"
	wait_healthy "$s" "$pid"
	log "$s started (pid $pid) in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s: $(svc_url "$s")"
}

stop_service() {
	local s=$1 pid deadline
	if ! pid=$(svc_pid "$s"); then
		rm -f "$(svc_pidfile "$s")"
		log "$s is not running"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + STOP_TIMEOUT))
	while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
	if pid_alive "$pid"; then
		log "$s (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		deadline=$((SECONDS + 10))
		while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
		pid_alive "$pid" && die "$s (pid $pid) did not exit"
	fi
	rm -f "$(svc_pidfile "$s")"
	log "$s stopped (pid $pid)"
}

status_service() {
	local s=$1 pid health
	if pid=$(svc_pid "$s"); then
		if svc_healthy "$s"; then health=healthy; else health=UNHEALTHY; fi
		printf '%-11s running  pid %-8s %-9s %s\n' "$s" "$pid" "$health" "$(svc_url "$s")"
		[[ $health == healthy ]]
	else
		printf '%-11s stopped\n' "$s"
		return 1
	fi
}

lock_state() {
	command -v flock >/dev/null 2>&1 || return 0
	exec 9>"$STATE/.lock"
	if ! flock -n 9; then
		log "waiting for another services.sh run on $STATE ..."
		flock -w 1200 9 || die "timed out waiting for the lock on $STATE/.lock"
	fi
}

services_args() { # validate service names; default all
	if (($# == 0)) || [[ $* == all ]]; then
		echo "${ALL_SERVICES[*]}"
		return
	fi
	local s
	for s in "$@"; do
		svc_valid "$s" || die "unknown service '$s' (want one of: ${ALL_SERVICES[*]})"
	done
	echo "$*"
}

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit 2
}

# ---------------------------------------------------------------------------

main() {
	local cmd=${1:-}
	(($#)) && shift
	local svcs s rc=0
	case $cmd in
	up)
		(($# == 0)) || die "up takes no arguments (use: start SERVICE)"
		init_state
		lock_state
		ensure_installed "${ALL_SERVICES[@]}"
		for s in "${ALL_SERVICES[@]}"; do start_service "$s"; done
		write_env
		log "env file: $STATE/env"
		cat "$STATE/env"
		;;
	down)
		(($# == 0)) || die "down takes no arguments (use: stop SERVICE)"
		[[ -d $STATE ]] || {
			log "nothing to stop ($STATE does not exist)"
			return 0
		}
		init_state
		lock_state
		for s in "${ALL_SERVICES[@]}"; do stop_service "$s"; done
		;;
	start | stop | restart)
		svcs=$(services_args "$@")
		init_state
		lock_state
		# shellcheck disable=SC2086
		if [[ $cmd != stop ]]; then ensure_installed $svcs; fi
		for s in $svcs; do
			case $cmd in
			start) start_service "$s" ;;
			stop) stop_service "$s" ;;
			restart)
				stop_service "$s"
				start_service "$s"
				;;
			esac
		done
		if [[ $cmd != stop ]]; then write_env; fi
		;;
	install)
		svcs=$(services_args "$@")
		init_state
		lock_state
		# shellcheck disable=SC2086
		ensure_installed $svcs
		;;
	env)
		[[ -f $STATE/env ]] || die "$STATE/env does not exist; run: $0 up"
		cat "$STATE/env"
		;;
	status)
		for s in "${ALL_SERVICES[@]}"; do status_service "$s" || rc=1; done
		[[ -f $STATE/env ]] && echo "env file: $STATE/env"
		return "$rc"
		;;
	-h | --help | help) usage ;;
	*)
		log "unknown command '${cmd}'"
		usage
		;;
	esac
}

main "$@"
