#!/usr/bin/env bash
# Local infrastructure for development, tests and benchmarks, without Docker:
# Kafka (KRaft, single node), Redis, Prometheus and Alertmanager, all bound to
# 127.0.0.1 on ports of our own so they never collide with system services.
#
# usage: stack.sh up|down [SERVICE...]      (start|stop are aliases)
#        stack.sh restart SERVICE...
#        stack.sh kill|pause|resume SERVICE...  fault injection: SIGKILL/SIGSTOP/SIGCONT
#        stack.sh status                        exit 0 only if every service answers
#        stack.sh logs [SERVICE...] [-f]        last $LINES_TO_SHOW (100) lines, -f follows
#        stack.sh reload                        re-read Prometheus rules/config, Alertmanager config
#        stack.sh deps [APT_PACKAGE...]         install what the stack needs (+ extras)
#
# SERVICE is one of: redis kafka alertmanager prometheus (none = all)
#
# State (data, logs, pid files, rendered configs) lives in $STACK_DIR
# (default: <repo>/.stack). Every command is idempotent: `up` only starts what
# is not running, `down` only stops what is. Ports are overridable so tests can
# run throw-away instances beside the main stack:
#   KAFKA_PORT=29092 KAFKA_CONTROLLER_PORT=29093 REDIS_PORT=26379
#   PROM_PORT=29090 AM_PORT=29094
# Other knobs: STACK_START_TIMEOUT (s, per service), STACK_STOP_TIMEOUT (s),
# KAFKA_JVM_OPTS, STACK_PYTHON (interpreter with kafka-python, for readiness).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
DEPLOY=$REPO/deploy

# Prometheus and Kafka need absolute paths in their configs.
STACK_DIR=$(realpath -m "${STACK_DIR:-$REPO/.stack}")
LOG_DIR=$STACK_DIR/logs
RUN_DIR=$STACK_DIR/run

KAFKA_PORT=${KAFKA_PORT:-29092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-29093}
REDIS_PORT=${REDIS_PORT:-26379}
PROM_PORT=${PROM_PORT:-29090}
AM_PORT=${AM_PORT:-29094}

START_TIMEOUT=${STACK_START_TIMEOUT:-90}
STOP_TIMEOUT=${STACK_STOP_TIMEOUT:-30}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--Xms256m -Xmx512m}
STACK_PYTHON=${STACK_PYTHON:-$REPO/.venv/bin/python}

KAFKA_POM=$DEPLOY/kafka/pom.xml
KAFKA_LIBS=$STACK_DIR/kafka/libs

# Start order matters only for readability of the output: everything is
# launched first and awaited afterwards, so `up` takes as long as the slowest
# service (Kafka), not the sum.
SERVICES=(redis kafka alertmanager prometheus)

# ----------------------------------------------------------------- helpers --

say() { printf 'stack: %s\n' "$*"; }
err() { printf 'stack: ERROR: %s\n' "$*" >&2; }
die() { err "$*"; exit 1; }

# Microsecond wall clock; bash 5 has it built in, so no bc/date forks.
now_us() { echo "${EPOCHREALTIME//[^0-9]/}"; }
secs_since() {
    local d=$(( $(now_us) - $1 ))
    printf '%d.%ds' $((d / 1000000)) $(((d / 100000) % 10))
}

is_service() {
    local s
    for s in "${SERVICES[@]}"; do [[ $1 == "$s" ]] && return 0; done
    return 1
}

log_of() { echo "$LOG_DIR/$1.log"; }

address_of() {
    case $1 in
        kafka) echo "127.0.0.1:$KAFKA_PORT" ;;
        redis) echo "127.0.0.1:$REDIS_PORT" ;;
        prometheus) echo "127.0.0.1:$PROM_PORT" ;;
        alertmanager) echo "127.0.0.1:$AM_PORT" ;;
    esac
}

ports_of() {
    case $1 in
        kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" ;;
        redis) echo "$REDIS_PORT" ;;
        prometheus) echo "$PROM_PORT" ;;
        alertmanager) echo "$AM_PORT" ;;
    esac
}

# A substring of /proc/PID/cmdline identifying the service: guards against a
# stale pid file whose pid was reused by an unrelated process.
cmdline_marker() {
    case $1 in
        kafka) echo "kafka.Kafka" ;;
        redis) echo "redis-server" ;;
        prometheus) echo "--storage.tsdb.path=$STACK_DIR/" ;;
        alertmanager) echo "--storage.path=$STACK_DIR/" ;;
    esac
}

# Alive = exists and is not a zombie (in containers PID 1 may never reap our
# orphaned daemons, and kill -0 succeeds on zombies).
pid_state() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    echo "${stat%% *}"
}

# Prints the pid of the running service, or nothing (exit 1).
svc_pid() {
    local pidf=$RUN_DIR/$1.pid pid state cmd
    [[ -f $pidf ]] || return 1
    pid=$(<"$pidf")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(pid_state "$pid") || return 1
    [[ $state != Z ]] || return 1
    cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $cmd == *"$(cmdline_marker "$1")"* ]] || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Minimal HTTP client on bash's /dev/tcp: keeps curl/wget out of the
# dependencies of a fresh CI machine. Prints the status code.
http_status() {
    local method=$1 port=$2 path=$3
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf '%s %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
            "$method" "$path" "$port" >&3
        IFS=' ' read -r -t 5 _ code _ <&3 || exit 1
        echo "$code"
    ) 2>/dev/null
}
http_ok() { [[ $(http_status GET "$1" "$2") == 200 ]]; }

# --------------------------------------------------------------- packages --

# Installs Debian packages in one transaction, running `apt-get update` at most
# once per CI job (STACK_APT_UPDATED is exported for nested invocations).
apt_install() {
    (($#)) || return 0
    local sudo=() created_policy=0
    ((EUID == 0)) || sudo=(sudo)
    mkdir -p "$LOG_DIR"
    say "installing apt packages: $* (log: $LOG_DIR/apt.log)"
    # Keep postinst scripts from starting system-wide redis/prometheus daemons
    # on their default ports: we run our own instances.
    if [[ ! -e /usr/sbin/policy-rc.d ]] && ((EUID == 0)); then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    # openjdk's postinst fails on slim images without this directory.
    "${sudo[@]}" mkdir -p /usr/share/man/man1
    local rc=0
    {
        if [[ -z ${STACK_APT_UPDATED:-} ]]; then
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q
        fi &&
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q \
                --no-install-recommends "$@"
    } >>"$LOG_DIR/apt.log" 2>&1 || rc=$?
    export STACK_APT_UPDATED=1
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc)); then
        tail -n 30 "$LOG_DIR/apt.log" >&2
        die "apt-get install $* failed (exit $rc); log: $LOG_DIR/apt.log"
    fi
}

# Packages missing for the given services (binary:package pairs).
missing_packages() {
    local svc pair pairs
    for svc in "$@"; do
        case $svc in
            redis) pairs=(redis-server:redis-server redis-cli:redis-tools) ;;
            kafka)
                pairs=(java:openjdk-17-jre-headless)
                # Maven is only needed to fetch the jars the first time.
                kafka_libs_current || pairs+=(mvn:maven)
                ;;
            prometheus) pairs=(prometheus:prometheus) ;;
            alertmanager) pairs=(prometheus-alertmanager:prometheus-alertmanager) ;;
        esac
        for pair in "${pairs[@]}"; do
            command -v "${pair%%:*}" >/dev/null 2>&1 || echo "${pair#*:}"
        done
    done
}

# Installs what the given services need plus any extra package names
# (`deps` lets .ci/run fold its own needs into the same apt transaction).
ensure_packages() {
    local -a svcs=() pkgs=()
    local a
    for a in "$@"; do
        if is_service "$a"; then svcs+=("$a"); else pkgs+=("$a"); fi
    done
    mapfile -t -O "${#pkgs[@]}" pkgs < <(missing_packages "${svcs[@]}")
    ((${#pkgs[@]})) || return 0
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    apt_install "${pkgs[@]}"
}

# ------------------------------------------------------------- preparation --

# The jar set is keyed on the pom's checksum so a version bump re-fetches,
# and replaced atomically so old and new jars never mix on the classpath.
kafka_libs_current() {
    [[ -f $KAFKA_LIBS/.pom.sha256 ]] &&
        [[ $(<"$KAFKA_LIBS/.pom.sha256") == "$(sha256sum <"$KAFKA_POM" | cut -d' ' -f1)" ]]
}

prepare_kafka() {
    local t0 cid
    if ! kafka_libs_current; then
        t0=$(now_us)
        say "kafka: fetching broker jars with Maven (log: $LOG_DIR/maven.log)"
        rm -rf "$KAFKA_LIBS.tmp"
        if ! mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
            -DoutputDirectory="$KAFKA_LIBS.tmp" >"$LOG_DIR/maven.log" 2>&1; then
            tail -n 30 "$LOG_DIR/maven.log" >&2
            die "kafka: Maven could not fetch the broker jars; log: $LOG_DIR/maven.log"
        fi
        sha256sum <"$KAFKA_POM" | cut -d' ' -f1 >"$KAFKA_LIBS.tmp/.pom.sha256"
        rm -rf "$KAFKA_LIBS"
        mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
        say "kafka: jars fetched in $(secs_since "$t0")"
    fi

    sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
        -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
        -e "s|@KAFKA_DATA_DIR@|$STACK_DIR/kafka/data|g" \
        "$DEPLOY/kafka/server.properties" >"$STACK_DIR/kafka/server.properties"

    # KRaft storage is formatted exactly once; meta.properties marks it done.
    # Reformatting would mint a new cluster and orphan all data.
    if [[ ! -f $STACK_DIR/kafka/data/meta.properties ]]; then
        rm -rf "$STACK_DIR/kafka/data"
        if [[ -s $STACK_DIR/kafka/cluster.id ]]; then
            cid=$(<"$STACK_DIR/kafka/cluster.id")
        else
            cid=$(java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool random-uuid 2>>"$(log_of kafka)" | tail -n1)
            echo "$cid" >"$STACK_DIR/kafka/cluster.id"
        fi
        say "kafka: formatting storage (cluster id $cid)"
        java -Dlog4j2.configurationFile="$DEPLOY/kafka/log4j2.properties" -cp "$KAFKA_LIBS/*" \
            kafka.tools.StorageTool format --standalone -t "$cid" \
            -c "$STACK_DIR/kafka/server.properties" >>"$(log_of kafka)" 2>&1 ||
            die "kafka: storage format failed; log: $(log_of kafka)"
    fi
}

# Renders prometheus.yml into $STACK_DIR/prometheus, where its relative paths
# resolve to the rules symlink and to the file_sd targets directory.
render_prometheus() {
    local p=$STACK_DIR/prometheus
    mkdir -p "$p/targets" "$p/data"
    ln -sfn "$DEPLOY/prometheus/rules" "$p/rules"
    # Seed the default detector target once; tests add/remove their own files.
    [[ -e $p/targets/detector.json ]] || cp "$DEPLOY/prometheus/targets/detector.json" "$p/targets/"
    sed -e "s|127\.0\.0\.1:29094|127.0.0.1:$AM_PORT|g" \
        -e "s|127\.0\.0\.1:29090|127.0.0.1:$PROM_PORT|g" \
        "$DEPLOY/prometheus/prometheus.yml" >"$p/prometheus.yml.tmp"
    mv "$p/prometheus.yml.tmp" "$p/prometheus.yml"
}

# Checksum of everything a running process would pick up on reload.
config_sum() {
    case $1 in
        prometheus)
            # Rules may not exist yet; a missing glob must not trip pipefail.
            { cat "$STACK_DIR/prometheus/prometheus.yml" "$STACK_DIR"/prometheus/rules/*.yml 2>/dev/null || true; } | cksum
            ;;
        alertmanager) cksum <"$DEPLOY/alertmanager/alertmanager.yml" ;;
    esac
}

prepare() {
    mkdir -p "$STACK_DIR/$1"
    case $1 in
        kafka) prepare_kafka ;;
        prometheus) render_prometheus ;;
        alertmanager) mkdir -p "$STACK_DIR/alertmanager/data" ;;
        redis) : ;;
    esac
}

# ------------------------------------------------------------------ launch --

# Sets CMD to the service's command line.
command_of() {
    local -a jvm_opts
    case $1 in
        redis)
            # Command-line options override redis.conf (port/dir are per stack).
            CMD=(redis-server "$DEPLOY/redis/redis.conf" --port "$REDIS_PORT" --dir "$STACK_DIR/redis")
            ;;
        kafka)
            read -r -a jvm_opts <<<"$KAFKA_JVM_OPTS"
            # The classpath wildcard is expanded by java, not by the shell.
            CMD=(java "${jvm_opts[@]}" -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
                -Dlog4j2.configurationFile="$DEPLOY/kafka/log4j2.properties"
                -cp "$KAFKA_LIBS/*" kafka.Kafka "$STACK_DIR/kafka/server.properties")
            ;;
        prometheus)
            CMD=(prometheus --config.file="$STACK_DIR/prometheus/prometheus.yml"
                --web.listen-address="127.0.0.1:$PROM_PORT"
                --storage.tsdb.path="$STACK_DIR/prometheus/data"
                --storage.tsdb.retention.time=2d
                --web.enable-lifecycle)
            ;;
        alertmanager)
            # Clustering off: a single local instance must not gossip on 9094.
            CMD=(prometheus-alertmanager --config.file="$DEPLOY/alertmanager/alertmanager.yml"
                --web.listen-address="127.0.0.1:$AM_PORT"
                --storage.path="$STACK_DIR/alertmanager/data"
                --cluster.listen-address=)
            ;;
    esac
}

# Starts the service in the background and records its pid.
launch() {
    local svc=$1 log pidf i
    log=$(log_of "$svc")
    pidf=$RUN_DIR/$svc.pid
    local -a CMD
    command_of "$svc"
    printf '=== stack.sh %s: starting %s: %s\n' "$(date -Is)" "$svc" "${CMD[*]}" >>"$log"
    rm -f "$pidf"
    # setsid: own session, so Ctrl-C on `make test` does not take the stack
    # down with it. The wrapper closes every inherited fd above 2 (notably our
    # flock fd, which would otherwise stay locked for the daemon's lifetime),
    # writes its own pid and execs the service, so the pid is the service's.
    # shellcheck disable=SC2016  # expanded by the inner shell
    setsid bash -c '
        pidf=$1; shift
        for fd in /proc/$$/fd/*; do
            fd=${fd##*/}; ((fd > 2)) && eval "exec $fd>&-"
        done
        echo $$ >"$pidf"
        exec "$@"' stack-launch "$pidf" "${CMD[@]}" </dev/null >>"$log" 2>&1 &
    for ((i = 0; i < 100; i++)); do
        [[ -s $pidf ]] && return 0
        sleep 0.05
    done
    die "$svc: launcher did not write $pidf; log: $log"
}

# Returns 0 when the service answers a real request.
answers() {
    case $1 in
        redis) [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]] ;;
        prometheus) http_ok "$PROM_PORT" /-/ready ;;
        alertmanager) http_ok "$AM_PORT" /-/ready ;;
        kafka) port_open "$KAFKA_PORT" ;;  # cheap check for `status`; see wait_kafka
    esac
}

# Kafka readiness is a metadata round-trip via kafka-python (deploy/local/
# kafka_ready.py, run in the background while the other services are polled).
# Without the project venv, fall back to the broker's own "started" log line
# plus an open port.
kafka_probe_available() {
    [[ -x $STACK_PYTHON ]] && "$STACK_PYTHON" -c 'import kafka' 2>/dev/null
}
kafka_started_fallback() {
    port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$(log_of kafka)"
}

# Waits until every service in WAIT_T0 (name -> start time in us) answers,
# polling them together so each reported time is that service's own.
# Fills WAIT_RC: 0 ready, 1 timeout, 2 process died.
wait_all() {
    local svc deadline=$((SECONDS + START_TIMEOUT)) probe_pid=0 rc use_probe=0
    local -A pending=()
    for svc in "${!WAIT_T0[@]}"; do pending[$svc]=1; done
    if [[ -n ${pending[kafka]:-} ]]; then
        if kafka_probe_available; then
            use_probe=1
            "$STACK_PYTHON" "$SCRIPT_DIR/kafka_ready.py" --bootstrap "127.0.0.1:$KAFKA_PORT" \
                --timeout "$START_TIMEOUT" --pid "$(cat "$RUN_DIR/kafka.pid" 2>/dev/null || echo 0)" \
                2>>"$(log_of kafka)" &
            probe_pid=$!
        else
            say "kafka: no kafka-python at $STACK_PYTHON; readiness = log line + open port"
        fi
    fi
    while ((${#pending[@]})); do
        for svc in "${!pending[@]}"; do
            rc=-1
            if [[ $svc == kafka ]] && ((use_probe)); then
                # Finished = gone or a zombie not yet reaped by bash.
                if [[ $(pid_state "$probe_pid" || echo X) =~ ^[ZX]$ ]]; then
                    rc=0
                    wait "$probe_pid" || rc=$?
                fi
            elif ! svc_pid "$svc" >/dev/null; then
                rc=2
            elif [[ $svc == kafka ]]; then
                kafka_started_fallback && rc=0
            elif answers "$svc"; then
                rc=0
            fi
            if ((rc < 0 && SECONDS >= deadline)); then rc=1; fi
            if ((rc >= 0)); then
                WAIT_RC[$svc]=$rc
                [[ $rc == 0 ]] && WAIT_DT[$svc]=$(secs_since "${WAIT_T0[$svc]}")
                unset "pending[$svc]"
            fi
        done
        ((${#pending[@]})) && sleep 0.1
    done
    return 0
}

report_failure() {
    local svc=$1 why=$2 log
    log=$(log_of "$svc")
    err "$svc ($(address_of "$svc")) $why; log: $log"
    if [[ -s $log ]]; then
        printf -- '--- last lines of %s ---\n' "$log" >&2
        tail -n 15 "$log" >&2
        printf -- '---\n' >&2
    fi
}

# Reloads Prometheus/Alertmanager when their config or rules changed since
# they were started or last reloaded, so `up` picks up new alert rules.
maybe_reload() {
    local svc=$1 port sum
    case $svc in
        prometheus) render_prometheus; port=$PROM_PORT ;;
        alertmanager) port=$AM_PORT ;;
        *) return 0 ;;
    esac
    sum=$(config_sum "$svc")
    [[ -f $RUN_DIR/$svc.cfgsum && $(<"$RUN_DIR/$svc.cfgsum") == "$sum" ]] && return 0
    if [[ $(http_status POST "$port" /-/reload) == 200 ]]; then
        echo "$sum" >"$RUN_DIR/$svc.cfgsum"
        say "$svc: configuration changed, reloaded"
    else
        report_failure "$svc" "rejected its new configuration (POST /-/reload failed)"
        return 1
    fi
}

# ----------------------------------------------------------------- commands --

LOCKED=0
with_lock() {
    ((LOCKED)) && return 0
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    # Serialises concurrent invocations (parallel test workers, a developer
    # running `make up` while tests start the stack).
    exec 9>"$RUN_DIR/lock"
    flock -w 600 9 || die "timed out waiting for $RUN_DIR/lock"
    LOCKED=1
}

cmd_start() {
    local t_all svc pid port failed=0 rc
    local -a to_start=() running=()
    local -A WAIT_T0=() WAIT_RC=() WAIT_DT=()
    t_all=$(now_us)
    with_lock

    for svc in "$@"; do
        if pid=$(svc_pid "$svc"); then
            say "$svc already running (pid $pid, $(address_of "$svc"))"
            running+=("$svc")
            continue
        fi
        rm -f "$RUN_DIR/$svc.pid"
        # Something else owns our port (a stack whose .stack/ was deleted, a
        # system daemon...): our process would die or, worse, the readiness
        # probe would talk to the impostor.
        for port in $(ports_of "$svc"); do
            if port_open "$port"; then
                echo "stack.sh: 127.0.0.1:$port is already in use by another process" >>"$(log_of "$svc")"
                report_failure "$svc" "cannot start: 127.0.0.1:$port is already in use by another process (not started by this stack in $STACK_DIR)"
                failed=1
                continue 2
            fi
        done
        to_start+=("$svc")
    done

    # Slow one-time work (apt, Maven, storage format) happens before any
    # launch so that the reported start-up times are the services' own.
    ensure_packages "${to_start[@]}"
    for svc in "${to_start[@]}"; do
        # One log per run, the previous one kept: fault tests restart
        # services and the interesting lines are often in the run that died.
        [[ -f $(log_of "$svc") ]] && mv -f "$(log_of "$svc")" "$(log_of "$svc").1"
        prepare "$svc"
    done
    for svc in "${to_start[@]}"; do
        launch "$svc"
        WAIT_T0[$svc]=$(now_us)
        say "$svc starting (pid $(<"$RUN_DIR/$svc.pid"), $(address_of "$svc"))"
    done
    # Already-running services are checked too: "running" is not "answering".
    for svc in "${running[@]}"; do WAIT_T0[$svc]=$(now_us); done

    wait_all

    for svc in "$@"; do
        [[ -n ${WAIT_RC[$svc]:-} ]] || continue
        rc=${WAIT_RC[$svc]}
        if ((rc == 0)); then
            if [[ " ${running[*]} " == *" $svc "* ]]; then
                maybe_reload "$svc" || failed=1
            else
                [[ $svc == prometheus || $svc == alertmanager ]] &&
                    config_sum "$svc" >"$RUN_DIR/$svc.cfgsum"
                say "$svc ready in ${WAIT_DT[$svc]}"
            fi
            continue
        fi
        failed=1
        if ((rc == 2)); then
            report_failure "$svc" "exited during startup"
            rm -f "$RUN_DIR/$svc.pid"
        else
            report_failure "$svc" "did not answer within ${START_TIMEOUT}s"
            # Do not leave a half-started process that the next `up` would
            # mistake for a healthy one.
            [[ " ${running[*]} " == *" $svc "* ]] || stop_one "$svc" >/dev/null
        fi
    done

    ((failed)) && die "stack not ready (see errors above)"
    say "ready: $* (${#to_start[@]} started) in $(secs_since "$t_all")"
}

stop_one() {
    local svc=$1 pid t0 deadline
    if ! pid=$(svc_pid "$svc"); then
        rm -f "$RUN_DIR/$svc.pid"
        say "$svc not running"
        return 0
    fi
    t0=$(now_us)
    # A paused (SIGSTOP) process cannot act on SIGTERM.
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while svc_pid "$svc" >/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if svc_pid "$svc" >/dev/null; then
        say "$svc did not stop within ${STOP_TIMEOUT}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while svc_pid "$svc" >/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    fi
    svc_pid "$svc" >/dev/null && die "$svc (pid $pid) survived SIGKILL"
    rm -f "$RUN_DIR/$svc.pid"
    say "$svc stopped in $(secs_since "$t0")"
}

cmd_stop() {
    local i
    with_lock
    # Reverse start order: Prometheus stops scraping before its targets vanish.
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        [[ " $* " == *" ${SERVICES[i]} "* ]] && stop_one "${SERVICES[i]}"
    done
    return 0
}

# Fault injection: crash (SIGKILL) or freeze (SIGSTOP) / thaw (SIGCONT).
cmd_signal() {
    local sig=$1 svc pid
    shift
    with_lock
    for svc in "$@"; do
        if ! pid=$(svc_pid "$svc"); then
            say "$svc not running"
            continue
        fi
        kill "-$sig" "$pid"
        case $sig in
            KILL)
                while svc_pid "$svc" >/dev/null; do sleep 0.05; done
                rm -f "$RUN_DIR/$svc.pid"
                say "$svc killed (pid $pid)"
                ;;
            STOP) say "$svc paused (pid $pid)" ;;
            CONT) say "$svc resumed (pid $pid)" ;;
        esac
    done
}

cmd_status() {
    local svc pid state any_down=0
    printf '%-13s %-9s %-17s %s\n' SERVICE STATE ADDRESS PID
    for svc in "${SERVICES[@]}"; do
        if pid=$(svc_pid "$svc"); then
            if [[ $(pid_state "$pid") == T ]]; then
                state=paused
            elif answers "$svc"; then
                state=up
            else
                state=starting
            fi
        else
            pid=- state=down
        fi
        [[ $state == up ]] || any_down=1
        printf '%-13s %-9s %-17s %s\n' "$svc" "$state" "$(address_of "$svc")" "$pid"
    done
    printf 'state dir: %s\n' "$STACK_DIR"
    # LSB convention: 3 = not (fully) running.
    ((any_down)) && return 3
    return 0
}

cmd_logs() {
    local follow=() svcs=() a f
    for a in "$@"; do
        case $a in
            -f | --follow) follow=(-F) ;;
            *) is_service "$a" || die "unknown service '$a' (one of: ${SERVICES[*]})"; svcs+=("$a") ;;
        esac
    done
    ((${#svcs[@]})) || svcs=("${SERVICES[@]}")
    local files=()
    for a in "${svcs[@]}"; do
        f=$(log_of "$a")
        [[ -f $f ]] && files+=("$f")
    done
    ((${#files[@]})) || die "no logs yet in $LOG_DIR"
    exec tail -n "${LINES_TO_SHOW:-100}" "${follow[@]}" "${files[@]}"
}

cmd_reload() {
    local svc failed=0
    with_lock
    for svc in prometheus alertmanager; do
        svc_pid "$svc" >/dev/null || { say "$svc not running"; continue; }
        rm -f "$RUN_DIR/$svc.cfgsum"  # force
        maybe_reload "$svc" || failed=1
    done
    return "$failed"
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

# Validates SERVICE arguments into SVCS (canonical order); none means all.
parse_services() {
    local s
    SVCS=()
    for s in "$@"; do
        is_service "$s" || { err "unknown service '$s' (one of: ${SERVICES[*]})"; exit 2; }
    done
    for s in "${SERVICES[@]}"; do
        if (($# == 0)) || [[ " $* " == *" $s "* ]]; then SVCS+=("$s"); fi
    done
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    local -a SVCS
    case $cmd in
        up | start)
            parse_services "$@"
            cmd_start "${SVCS[@]}"
            ;;
        down | stop)
            parse_services "$@"
            cmd_stop "${SVCS[@]}"
            ;;
        restart)
            parse_services "$@"
            cmd_stop "${SVCS[@]}"
            cmd_start "${SVCS[@]}"
            ;;
        kill | pause | resume)
            (($#)) || { err "$cmd needs a SERVICE"; exit 2; }
            parse_services "$@"
            local -A sig=([kill]=KILL [pause]=STOP [resume]=CONT)
            cmd_signal "${sig[$cmd]}" "${SVCS[@]}"
            ;;
        status) cmd_status ;;
        logs) cmd_logs "$@" ;;
        reload) cmd_reload ;;
        deps) ensure_packages "${SERVICES[@]}" "$@" ;;
        -h | --help | help) usage 0 ;;
        *) usage 2 >&2 ;;
    esac
}

main "$@"
