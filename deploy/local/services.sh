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
# Cluster mode (the scale-out stack, its own state folder and ports; see README "Cluster mode"):
#   services.sh up --cluster       install what is missing (plus Debian zookeeper), start 3 NATS
#                                  JetStream servers, ZooKeeper, ClickHouse 2 shards x 2 replicas
#                                  (cluster "callpipe"), MinIO over 4 drives; write + print the env file
#   services.sh down|env|status|usage --cluster   stop all / print env / show nodes / RSS + CPU per node
#   services.sh start|stop|kill|restart --cluster NODE...   one node (kill = SIGKILL), for outage tests
#   NODE is one of: nats-1 nats-2 nats-3 zookeeper ch-s1r1 ch-s1r2 ch-s2r1 ch-s2r2 minio
#
# Environment:
#   CALLPIPE_STATE_DIR          state folder (default: $REPO/.state/services)
#   CALLPIPE_SERVICES_TIMEOUT   seconds to wait for a service to become healthy (default 60)
#   CALLPIPE_SERVICES_PORT_OFFSET  added to every port (default 0: NATS 14222, ClickHouse 19000/18123,
#                               MinIO 19100/19101, Redis 16379; cluster: NATS 24222-24224, ClickHouse
#                               29000-29003 / 28123-28126, ZooKeeper 22181, MinIO 29100/29101)
#   CALLPIPE_CLUSTER_STATE_DIR  the cluster's state folder (default: $REPO/.state/cluster)
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

# svc_describe SERVICE: what is known of a service, one entry per service, in
# the caller's SVC_BIN (its server binary), SVC_PORTS (the ports it listens on)
# and SVC_URL (how to reach it); all empty for an unknown service.
svc_describe() {
	SVC_BIN='' SVC_PORTS='' SVC_URL=''
	case $1 in
	nats)
		SVC_BIN=nats-server SVC_PORTS="$NATS_PORT $NATS_MONITOR_PORT"
		SVC_URL="nats://$HOST:$NATS_PORT (monitor http://$HOST:$NATS_MONITOR_PORT)"
		;;
	clickhouse)
		SVC_BIN=clickhouse-server SVC_PORTS="$CH_TCP_PORT $CH_HTTP_PORT"
		SVC_URL="native $HOST:$CH_TCP_PORT, http://$HOST:$CH_HTTP_PORT"
		;;
	minio) SVC_BIN=minio SVC_PORTS="$MINIO_PORT $MINIO_CONSOLE_PORT" SVC_URL="http://$HOST:$MINIO_PORT" ;;
	redis) SVC_BIN=redis-server SVC_PORTS="$REDIS_PORT" SVC_URL="redis://$HOST:$REDIS_PORT" ;;
	esac
}
svc_binname() { local SVC_BIN SVC_PORTS SVC_URL && svc_describe "$1" && echo "$SVC_BIN"; }
svc_ports() { local SVC_BIN SVC_PORTS SVC_URL && svc_describe "$1" && echo "$SVC_PORTS"; }
svc_url() { local SVC_BIN SVC_PORTS SVC_URL && svc_describe "$1" && echo "$SVC_URL"; }

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

# pid_from PIDFILE BINARY: print the pid recorded in PIDFILE if that process is alive and runs
# BINARY (a recycled pid is not ours).
pid_from() {
	local pid cmdline
	[[ -f $1 ]] || return 1
	pid=$(<"$1")
	pid_alive "$pid" || return 1
	cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	[[ $cmdline == *"$2"* ]] || return 1
	echo "$pid"
}

# svc_pid SERVICE: print the pid if the service's recorded process is alive (and is the right binary).
svc_pid() { pid_from "$(svc_pidfile "$1")" "$(svc_binname "$1")"; }

# ports_free NAME FOLDER PORT...: die naming the first PORT something else listens on.
ports_free() {
	local n=$1 dir=$2 port
	shift 2
	for port in "$@"; do
		if port_open "$port"; then
			die "$n: port $HOST:$port is already in use by a process not managed from $dir (check: ss -ltnp 'sport = :$port')"
		fi
	done
}

# spawn DIR LOGFILE: start the command in the caller's CMD array as a daemon in DIR, its output
# appended to LOGFILE; SPAWNED is its pid.
spawn() {
	local dir=$1 logf=$2
	(
		# Do not leak inherited descriptors (the state lock on fd 9, callers' pipes) into the daemon:
		# a daemon holding a caller's pipe open makes that caller wait forever for EOF.
		local fd n
		for fd in "/proc/$BASHPID/fd/"*; do
			n=${fd##*/}
			if [[ $n =~ ^[0-9]+$ ]] && ((n > 2)); then eval "exec $n>&-" 2>/dev/null || true; fi
		done
		cd "$dir"
		exec setsid nohup "${CMD[@]}" >>"$logf" 2>&1 </dev/null
	) &
	SPAWNED=$!
}

# stop_pid NAME PID SIGNAL: send SIGNAL to PID and wait for it to exit; SIGKILL after STOP_TIMEOUT.
stop_pid() {
	local n=$1 pid=$2 sig=$3 deadline
	kill "-$sig" "$pid" 2>/dev/null || true
	deadline=$((SECONDS + STOP_TIMEOUT))
	while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
	if pid_alive "$pid"; then
		log "$n (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		deadline=$((SECONDS + 10))
		while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
		pid_alive "$pid" && die "$n (pid $pid) did not exit"
	fi
	return 0
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

# clickhouse_config DIR MODE CACHE_BYTES LISTENERS [CLUSTER]: DIR/config.xml (and the folders
# it names) of a ClickHouse server, the same in both modes but for the MODE noted in its header,
# its cache sizes, what it listens on (LISTENERS: the port elements) and, in cluster mode, the
# cluster's sections (CLUSTER, ending in a newline).
clickhouse_config() {
	local d=$1 mode=$2 cache=$3 listeners=$4 cluster=${5:-}
	mkdir -p "$d/data" "$d/tmp" "$d/log" "$d/user_files" "$d/format_schemas"
	cat >"$d/config.xml" <<EOF
<?xml version="1.0"?>
<!-- generated by deploy/local/services.sh$mode -->
<yandex>
    <logger>
        <level>information</level>
        <log>$d/log/clickhouse-server.log</log>
        <errorlog>$d/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>$HOST</listen_host>
$listeners
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>$cache</uncompressed_cache_size>
    <mark_cache_size>$cache</mark_cache_size>
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
$cluster</yandex>
EOF
}

# clickhouse_users_quotas: the users and quotas sections of users.xml in both modes: the
# default user, without password, from loopback only, without limits.
clickhouse_users_quotas() {
	cat <<'EOF'
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
EOF
}

write_clickhouse_config() {
	local d=$STATE/clickhouse
	# No interserver_http_port: without it ClickHouse does not open the interserver listener.
	clickhouse_config "$d" "" 268435456 "    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>"
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
$(clickhouse_users_quotas)
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

# apt_get ARGS...: apt-get as root, one at a time on this machine: the test
# tools' installs (deploy/local/chromium.sh) run beside the services' ones.
APT_LOCK=${TMPDIR:-/tmp}/callpipe-apt.lock
apt_get() { run_root flock -w 900 "$APT_LOCK" env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }

install_apt() { # install_apt PKG...
	local pkgs=("$@") t0 p need_update=0
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${pkgs[*]} by hand (Debian/Ubuntu expected)"
	for p in "${pkgs[@]}"; do
		if ! apt-cache show "$p" >/dev/null 2>&1; then need_update=1; fi
	done
	t0=$SECONDS
	if ((need_update)); then
		log "apt-get update ..."
		apt_get update -q >"$STATE/install-apt.log" 2>&1 ||
			{ tail -n 20 "$STATE/install-apt.log" >&2; die "apt-get update failed"; }
	fi
	log "apt-get install ${pkgs[*]} ..."
	if ! apt_get install -y -q --no-install-recommends "${pkgs[@]}" >>"$STATE/install-apt.log" 2>&1; then
		if ((need_update)); then
			tail -n 20 "$STATE/install-apt.log" >&2
			die "apt-get install ${pkgs[*]} failed (log: $STATE/install-apt.log)"
		fi
		log "apt-get install failed; retrying after apt-get update ..."
		apt_get update -q >>"$STATE/install-apt.log" 2>&1 &&
			apt_get install -y -q --no-install-recommends "${pkgs[@]}" >>"$STATE/install-apt.log" 2>&1 ||
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
tail_logs() { # tail_logs FILE...: the last lines of each non-empty FILE, to stderr
	local f
	for f in "$@"; do
		[[ -s $f ]] || continue
		log "last 40 lines of $f:"
		tail -n 40 "$f" >&2 || true
	done
}

show_logs() { tail_logs "$(svc_log "$1")" "$STATE/$1/log/clickhouse-server.err.log"; }

# await_healthy NAME PID CHECK SHOW PAUSE: wait until `CHECK NAME` succeeds, polling every
# PAUSE seconds; when NAME's process exits or TIMEOUT passes, `SHOW NAME` prints its logs and
# the script dies.
await_healthy() {
	local n=$1 pid=$2 check=$3 show=$4 pause=$5 deadline=$((SECONDS + TIMEOUT))
	while ((SECONDS < deadline)); do
		"$check" "$n" && return 0
		if ! pid_alive "$pid"; then
			"$show" "$n"
			die "$n (pid $pid) exited during startup: see the log above"
		fi
		sleep "$pause"
	done
	"$show" "$n"
	die "$n (pid $pid) did not become healthy within ${TIMEOUT}s (CALLPIPE_SERVICES_TIMEOUT): see the log above"
}

wait_healthy() { await_healthy "$1" "$2" svc_healthy show_logs 0.1; } # wait_healthy SERVICE PID

start_service() {
	local s=$1 pid port logf t0
	logf=$(svc_log "$s")
	if pid=$(svc_pid "$s"); then
		wait_healthy "$s" "$pid"
		log "$s already running (pid $pid), healthy: $(svc_url "$s")"
		return 0
	fi
	rm -f "$(svc_pidfile "$s")"
	# shellcheck disable=SC2046
	ports_free "$s" "$STATE" $(svc_ports "$s")
	local CMD=()
	svc_command "$s"
	t0=$(date +%s.%N)
	{
		echo "=== $(date -u +%FT%TZ) starting $s: ${CMD[*]}" | sed -E 's/(MINIO_ROOT_PASSWORD=|CALLPIPE_JETSTREAM_KEY=)[^ ]*/\1***/g'
	} >>"$logf"
	spawn "$(svc_dir "$s")" "$logf"
	pid=$SPAWNED
	echo "$pid" >"$(svc_pidfile "$s")"
	wait_healthy "$s" "$pid"
	log "$s started (pid $pid) in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s: $(svc_url "$s")"
}

stop_service() {
	local s=$1 pid
	if ! pid=$(svc_pid "$s"); then
		rm -f "$(svc_pidfile "$s")"
		log "$s is not running"
		return 0
	fi
	stop_pid "$s" "$pid" TERM
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
# cluster mode (--cluster): the scale-out stack on loopback, in its own state folder
#   NATS: 3 JetStream servers in one cluster; ZooKeeper; ClickHouse 2 shards x 2 replicas
#   (4 clickhouse-server processes, cluster CLUSTER_NAME); MinIO erasure-coded over 4 drive folders.
# Ports (plus CALLPIPE_SERVICES_PORT_OFFSET): NATS clients 24222-24224, routes 26222-26224,
# monitors 28222-28224; ZooKeeper 22181; ClickHouse native 29000-29003, HTTP 28123-28126,
# interserver 29009-29012; MinIO 29100 (console 29101).

CLUSTER_STATE=${CALLPIPE_CLUSTER_STATE_DIR:-$REPO/.state/cluster}
CLUSTER_NAME=callpipe
CL_NATS_NODES=(nats-1 nats-2 nats-3)
CL_CH_NODES=(ch-s1r1 ch-s1r2 ch-s2r1 ch-s2r2)
CL_ALL_NODES=("${CL_NATS_NODES[@]}" zookeeper "${CL_CH_NODES[@]}" minio)
CL_ZK_PORT=$((22181 + PORT_OFFSET))
CL_MINIO_PORT=$((29100 + PORT_OFFSET))
CL_MINIO_CONSOLE_PORT=$((29101 + PORT_OFFSET))
# Small caches: four servers share a 2-core machine with the tests.
CL_CH_CACHE_BYTES=67108864
CL_ZK_HEAP=256m

# cl_index NODE: the node's 0-based index among its kind (nats-2 -> 1, ch-s2r1 -> 2).
cl_index() {
	case $1 in
	nats-[123]) echo $((${1#nats-} - 1)) ;;
	ch-s1r1) echo 0 ;;
	ch-s1r2) echo 1 ;;
	ch-s2r1) echo 2 ;;
	ch-s2r2) echo 3 ;;
	*) echo 0 ;;
	esac
}
cl_nats_port() { echo $((24222 + PORT_OFFSET + $1)); }
cl_nats_route_port() { echo $((26222 + PORT_OFFSET + $1)); }
cl_nats_monitor_port() { echo $((28222 + PORT_OFFSET + $1)); }
cl_ch_tcp_port() { echo $((29000 + PORT_OFFSET + $1)); }
cl_ch_http_port() { echo $((28123 + PORT_OFFSET + $1)); }
cl_ch_interserver_port() { echo $((29009 + PORT_OFFSET + $1)); }

cl_valid() {
	local n
	for n in "${CL_ALL_NODES[@]}"; do [[ $1 == "$n" ]] && return 0; done
	return 1
}

cl_dir() { echo "$CLUSTER_STATE/$1"; }
cl_pidfile() { echo "$CLUSTER_STATE/$1/$1.pid"; }
cl_log() { echo "$CLUSTER_STATE/$1/$1.log"; }

# cl_describe NODE: what is known of a cluster node, one entry per kind of
# node, in the caller's CL_BIN (its server binary, as its process shows it),
# CL_PORTS (the ports it listens on) and CL_URL (how to reach it); all empty
# for an unknown node.
cl_describe() {
	local i
	i=$(cl_index "$1")
	CL_BIN='' CL_PORTS='' CL_URL=''
	case $1 in
	nats-*)
		CL_BIN=nats-server
		CL_PORTS="$(cl_nats_port "$i") $(cl_nats_route_port "$i") $(cl_nats_monitor_port "$i")"
		CL_URL="nats://$HOST:$(cl_nats_port "$i") (route $(cl_nats_route_port "$i"), monitor http://$HOST:$(cl_nats_monitor_port "$i"))"
		;;
	ch-*)
		CL_BIN=clickhouse-server
		CL_PORTS="$(cl_ch_tcp_port "$i") $(cl_ch_http_port "$i") $(cl_ch_interserver_port "$i")"
		CL_URL="native $HOST:$(cl_ch_tcp_port "$i"), http://$HOST:$(cl_ch_http_port "$i"), interserver $(cl_ch_interserver_port "$i")"
		;;
	zookeeper) CL_BIN=org.apache.zookeeper.server.ZooKeeperServerMain CL_PORTS="$CL_ZK_PORT" CL_URL="$HOST:$CL_ZK_PORT" ;;
	minio) CL_BIN=minio CL_PORTS="$CL_MINIO_PORT $CL_MINIO_CONSOLE_PORT" CL_URL="http://$HOST:$CL_MINIO_PORT (4 drives)" ;;
	esac
}
cl_binname() { local CL_BIN CL_PORTS CL_URL && cl_describe "$1" && echo "$CL_BIN"; }
cl_ports() { local CL_BIN CL_PORTS CL_URL && cl_describe "$1" && echo "$CL_PORTS"; }
cl_url() { local CL_BIN CL_PORTS CL_URL && cl_describe "$1" && echo "$CL_URL"; }

# cl_healthy NODE: the node answers. A NATS node counts only once it serves JetStream as part of
# the cluster (full /healthz: meta leader known, its streams current).
cl_healthy() {
	local i out
	i=$(cl_index "$1")
	case $1 in
	nats-*) http_ok "$(cl_nats_monitor_port "$i")" /healthz ;;
	ch-*) http_ok "$(cl_ch_http_port "$i")" /ping ;;
	minio) http_ok "$CL_MINIO_PORT" /minio/health/cluster ;;
	zookeeper)
		out=$(
			exec 2>/dev/null
			exec 3<>"/dev/tcp/$HOST/$CL_ZK_PORT" || exit 1
			printf 'ruok' >&3
			IFS= read -r -t 3 line <&3
			printf '%s' "$line"
		) || return 1
		[[ $out == imok ]]
		;;
	esac
}

cl_pid() { pid_from "$(cl_pidfile "$1")" "$(cl_binname "$1")"; }

cl_write_nats_config() {
	local n=$1 i d routes="" j
	i=$(cl_index "$n")
	d=$(cl_dir "$n")
	mkdir -p "$d/jetstream"
	for j in 0 1 2; do routes+="    nats-route://$HOST:$(cl_nats_route_port "$j")"$'\n'; done
	cat >"$d/nats.conf" <<EOF
# generated by deploy/local/services.sh --cluster
server_name: callpipe-$n
listen: $HOST:$(cl_nats_port "$i")
http: $HOST:$(cl_nats_monitor_port "$i")
jetstream {
  store_dir: "$d/jetstream"
  max_memory_store: 256MB
}
cluster {
  name: callpipe-local
  listen: $HOST:$(cl_nats_route_port "$i")
  routes: [
$routes  ]
}
EOF
}

cl_write_zookeeper_config() {
	local d
	d=$(cl_dir zookeeper)
	mkdir -p "$d/data"
	cat >"$d/zoo.cfg" <<EOF
# generated by deploy/local/services.sh --cluster
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$d/data
clientPort=$CL_ZK_PORT
clientPortAddress=$HOST
maxClientCnxns=200
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,mntr
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
EOF
}

# cl_write_clickhouse_config NODE: one server of the 2 x 2 cluster. Shards and replicas are
# told apart by port only, so each server recognises itself in remote_servers by its tcp_port
# (what distributed DDL needs to pick its own tasks).
cl_write_clickhouse_config() {
	local n=$1 i d shard replica s r
	i=$(cl_index "$n")
	d=$(cl_dir "$n")
	shard=$((i / 2 + 1))
	replica=$((i % 2 + 1))
	local shards=""
	for s in 0 1; do
		shards+="            <shard>"$'\n'"                <internal_replication>true</internal_replication>"$'\n'
		for r in 0 1; do
			shards+="                <replica><host>$HOST</host><port>$(cl_ch_tcp_port $((s * 2 + r)))</port></replica>"$'\n'
		done
		shards+="            </shard>"$'\n'
	done
	clickhouse_config "$d" " (cluster mode)" "$CL_CH_CACHE_BYTES" "    <http_port>$(cl_ch_http_port "$i")</http_port>
    <tcp_port>$(cl_ch_tcp_port "$i")</tcp_port>
    <interserver_http_port>$(cl_ch_interserver_port "$i")</interserver_http_port>
    <interserver_http_host>$HOST</interserver_http_host>" "    <remote_servers>
        <$CLUSTER_NAME>
$shards        </$CLUSTER_NAME>
    </remote_servers>
    <macros>
        <shard>$shard</shard>
        <replica>r$replica</replica>
    </macros>
    <zookeeper>
        <node><host>$HOST</host><port>$CL_ZK_PORT</port></node>
        <session_timeout_ms>30000</session_timeout_ms>
    </zookeeper>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
"
	cat >"$d/users.xml" <<EOF
<?xml version="1.0"?>
<!-- generated by deploy/local/services.sh (cluster mode) -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>in_order</load_balancing>
            <background_pool_size>4</background_pool_size>
            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>
        </default>
    </profiles>
$(clickhouse_users_quotas)
</yandex>
EOF
}

# cl_command NODE: fill CMD with the node's command line.
cl_command() {
	local n=$1 bin java
	case $n in
	nats-*)
		bin=$(gobin_dir)/nats-server
		[[ -x $bin ]] || die "$n: $bin is not installed (run: $0 up --cluster)"
		cl_write_nats_config "$n"
		CMD=("$bin" -c "$(cl_dir "$n")/nats.conf")
		;;
	ch-*)
		bin=$(find_bin clickhouse-server) || die "$n: clickhouse-server is not installed (run: $0 up --cluster)"
		cl_write_clickhouse_config "$n"
		CMD=("$bin" "--config-file=$(cl_dir "$n")/config.xml")
		;;
	zookeeper)
		java=$(find_bin java) || die "zookeeper: java not found (Debian's zookeeper package depends on it)"
		[[ -f /usr/share/java/zookeeper.jar ]] || die "zookeeper: /usr/share/java/zookeeper.jar missing (run: $0 up --cluster)"
		cl_write_zookeeper_config
		# The server class directly: Debian's zkEnv.sh hard-codes /etc/zookeeper/conf.
		CMD=("$java" "-Xms64m" "-Xmx$CL_ZK_HEAP" -Dzookeeper.admin.enableServer=false
			"-Dzookeeper.log.dir=$(cl_dir zookeeper)"
			-cp "/usr/share/java/zookeeper.jar:/etc/zookeeper/conf"
			org.apache.zookeeper.server.ZooKeeperServerMain "$(cl_dir zookeeper)/zoo.cfg")
		;;
	minio)
		bin=$(gobin_dir)/minio
		[[ -x $bin ]] || die "minio: $bin is not installed (run: $0 up --cluster)"
		ensure_minio_credentials
		mkdir -p "$(cl_dir minio)"/drive{1,2,3,4}
		# MINIO_CI_CD: the four drive folders share one disk, which MinIO refuses otherwise.
		CMD=(env "MINIO_ROOT_USER=$MINIO_ROOT_USER" "MINIO_ROOT_PASSWORD=$MINIO_ROOT_PASSWORD"
			MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CI_CD=on
			"$bin" server "$(cl_dir minio)/drive{1...4}"
			--address "$HOST:$CL_MINIO_PORT" --console-address "$HOST:$CL_MINIO_CONSOLE_PORT" --quiet)
		;;
	esac
}

cl_ensure_installed() {
	ensure_installed nats clickhouse minio
	if [[ ! -f /usr/share/java/zookeeper.jar ]]; then
		install_apt zookeeper
	fi
}

cl_show_logs() { tail_logs "$(cl_log "$1")" "$(cl_dir "$1")/log/clickhouse-server.err.log"; }

cl_wait_healthy() { await_healthy "$1" "$2" cl_healthy cl_show_logs 0.2; } # cl_wait_healthy NODE PID

# cl_launch NODE: start NODE unless it runs (no health wait: NATS nodes are healthy only once a
# majority of them runs). Prints the pid.
cl_launch() {
	local n=$1 pid port logf
	logf=$(cl_log "$n")
	mkdir -p "$(cl_dir "$n")"
	if pid=$(cl_pid "$n"); then
		echo "$pid"
		return 0
	fi
	rm -f "$(cl_pidfile "$n")"
	# shellcheck disable=SC2046
	ports_free "$n" "$CLUSTER_STATE" $(cl_ports "$n")
	local CMD=()
	cl_command "$n"
	echo "=== $(date -u +%FT%TZ) starting $n: ${CMD[*]}" | sed -E 's/(MINIO_ROOT_PASSWORD=)[^ ]*/\1***/' >>"$logf"
	spawn "$(cl_dir "$n")" "$logf"
	pid=$SPAWNED
	echo "$pid" >"$(cl_pidfile "$n")"
	echo "$pid"
}

# cl_start NODE...: launch all, then wait for each to be healthy.
cl_start() {
	local n pids=() k=0 t0=$SECONDS
	for n in "$@"; do pids+=("$(cl_launch "$n")"); done
	for n in "$@"; do
		cl_wait_healthy "$n" "${pids[k]}"
		log "$n running (pid ${pids[k]}), healthy: $(cl_url "$n")"
		k=$((k + 1))
	done
	log "started $* in $((SECONDS - t0))s"
}

# cl_stop [--kill] NODE...: SIGTERM (or SIGKILL), wait for the exit.
cl_stop() {
	local sig=TERM n pid
	if [[ ${1:-} == --kill ]]; then
		sig=KILL
		shift
	fi
	for n in "$@"; do
		if ! pid=$(cl_pid "$n"); then
			rm -f "$(cl_pidfile "$n")"
			log "$n is not running"
			continue
		fi
		stop_pid "$n" "$pid" "$sig"
		rm -f "$(cl_pidfile "$n")"
		log "$n stopped (pid $pid, SIG$sig)"
	done
}

cl_status() {
	local n pid health rc=0
	for n in "${CL_ALL_NODES[@]}"; do
		if pid=$(cl_pid "$n"); then
			if cl_healthy "$n"; then health=healthy; else
				health=UNHEALTHY
				rc=1
			fi
			printf '%-10s running  pid %-8s %-9s %s\n' "$n" "$pid" "$health" "$(cl_url "$n")"
		else
			printf '%-10s stopped\n' "$n"
			rc=1
		fi
	done
	[[ -f $CLUSTER_STATE/env ]] && echo "env file: $CLUSTER_STATE/env"
	return "$rc"
}

# cl_usage: resident memory (MiB) and CPU time (s) of the running nodes, for sizing.
cl_usage() {
	local n pid rss total_rss=0 ticks total_ticks=0 hz stat
	hz=$(getconf CLK_TCK)
	for n in "${CL_ALL_NODES[@]}"; do
		pid=$(cl_pid "$n") || continue
		rss=$(awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$pid/status" 2>/dev/null) || rss=0
		stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
		stat=${stat##*) }
		# fields 12 and 13 after the command: utime and stime in clock ticks
		ticks=$(awk '{ print $12 + $13 }' <<<"$stat")
		printf '%-10s rss %5s MiB  cpu %7.1f s\n' "$n" "$rss" "$(awk -v t="$ticks" -v h="$hz" 'BEGIN { print t / h }')"
		total_rss=$((total_rss + rss))
		total_ticks=$((total_ticks + ticks))
	done
	printf '%-10s rss %5s MiB  cpu %7.1f s\n' total "$total_rss" "$(awk -v t="$total_ticks" -v h="$hz" 'BEGIN { print t / h }')"
}

cl_write_env() {
	ensure_minio_credentials
	local f=$CLUSTER_STATE/env seeds="" monitors="" i chaddrs=""
	for i in 0 1 2; do seeds+="${seeds:+,}nats://$HOST:$(cl_nats_port "$i")"; done
	for i in 0 1 2; do monitors+="${monitors:+,}http://$HOST:$(cl_nats_monitor_port "$i")"; done
	for i in 0 1 2 3; do chaddrs+="${chaddrs:+,}$HOST:$(cl_ch_tcp_port "$i")"; done
	(
		umask 077
		{
			echo "# generated by deploy/local/services.sh --cluster; use: . $(printf '%q' "$f")  or  eval \"\$(deploy/local/services.sh env --cluster)\""
			echo "export CALLPIPE_SERVICES_MANAGED=1"
			echo "export CALLPIPE_SERVICES_CLUSTER=1"
			printf 'export CALLPIPE_CLUSTER_STATE_DIR=%q\n' "$CLUSTER_STATE"
			printf 'export CALLPIPE_SERVICES_SCRIPT=%q\n' "$SCRIPT_DIR/services.sh"
			echo "export CALLPIPE_SERVICES_PORT_OFFSET=$PORT_OFFSET"
			echo "export CALLPIPE_NATS_URL=$seeds"
			echo "export CALLPIPE_NATS_STREAM_REPLICAS=3"
			# the servers' monitoring endpoints (what KEDA's nats-jetstream scaler reads), in seed order
			echo "export CALLPIPE_CLUSTER_NATS_MONITOR=$monitors"
			echo "export CALLPIPE_CLICKHOUSE_ADDR=$chaddrs"
			echo "export CALLPIPE_CLICKHOUSE_HTTP_ADDR=$HOST:$(cl_ch_http_port 0)"
			echo "export CALLPIPE_CLICKHOUSE_CLUSTER=$CLUSTER_NAME"
			echo "export CALLPIPE_S3_ENDPOINT=$HOST:$CL_MINIO_PORT"
			echo "export CALLPIPE_S3_ACCESS_KEY=$MINIO_ROOT_USER"
			echo "export CALLPIPE_S3_SECRET_KEY=$MINIO_ROOT_PASSWORD"
			echo "export CALLPIPE_S3_USE_SSL=false"
		} >"$f.tmp"
	)
	mv "$f.tmp" "$f"
}

cl_nodes_args() { # validate node names; default all
	if (($# == 0)); then
		echo "${CL_ALL_NODES[*]}"
		return
	fi
	local n
	for n in "$@"; do
		cl_valid "$n" || die "unknown cluster node '$n' (want some of: ${CL_ALL_NODES[*]})"
	done
	echo "$*"
}

# cluster_main CMD [NODE...]: the commands of main for the cluster stack (--cluster already removed).
cluster_main() {
	local cmd=${1:-} nodes
	(($#)) && shift
	STATE=$CLUSTER_STATE # install logs, the lock and MinIO credentials live in the cluster's state
	case $cmd in
	up)
		(($# == 0)) || die "up --cluster takes no node names (use: start --cluster NODE)"
		mkdir -p "$STATE/minio"
		STATE=$(cd "$STATE" && pwd)
		CLUSTER_STATE=$STATE
		chmod 700 "$STATE" 2>/dev/null || true
		lock_state
		cl_ensure_installed
		# ZooKeeper first: the ClickHouse servers connect to it when they start.
		cl_start zookeeper
		cl_start "${CL_NATS_NODES[@]}"
		cl_start "${CL_CH_NODES[@]}"
		cl_start minio
		cl_write_env
		log "env file: $STATE/env"
		cat "$STATE/env"
		;;
	down)
		(($# == 0)) || die "down --cluster takes no node names (use: stop --cluster NODE)"
		[[ -d $STATE ]] || {
			log "nothing to stop ($STATE does not exist)"
			return 0
		}
		lock_state
		# ClickHouse before ZooKeeper, so that the servers close their sessions cleanly.
		cl_stop minio "${CL_CH_NODES[@]}" "${CL_NATS_NODES[@]}" zookeeper
		;;
	start | stop | kill | restart)
		nodes=$(cl_nodes_args "$@")
		[[ -d $STATE ]] || die "$STATE does not exist; run: $0 up --cluster"
		lock_state
		# shellcheck disable=SC2086
		case $cmd in
		start) cl_start $nodes ;;
		stop) cl_stop $nodes ;;
		kill) cl_stop --kill $nodes ;;
		restart)
			cl_stop $nodes
			cl_start $nodes
			;;
		esac
		;;
	env)
		[[ -f $STATE/env ]] || die "$STATE/env does not exist; run: $0 up --cluster"
		cat "$STATE/env"
		;;
	status) cl_status ;;
	usage) cl_usage ;;
	*)
		log "unknown command '${cmd}' with --cluster"
		usage
		;;
	esac
}

# ---------------------------------------------------------------------------

main() {
	local a rest=() cluster=0
	for a in "$@"; do
		if [[ $a == --cluster ]]; then cluster=1; else rest+=("$a"); fi
	done
	if ((cluster)); then
		cluster_main "${rest[@]}"
		return
	fi
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
