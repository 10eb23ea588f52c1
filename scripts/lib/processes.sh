# Process helpers shared by scripts/stack.sh and scripts/cluster.sh: pid files,
# background starts in their own session, stops with a grace period, readiness
# polling. The caller sets ROOT, RUN_DIR, LOG_DIR, START_TIMEOUT_SECS and
# STOP_TIMEOUT_SECS and defines say, warn and die before sourcing this file.

pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

# Prints the pid of component $1 when its pid file names a live process whose command
# line contains $2 (so a recycled pid is never mistaken for ours); fails otherwise.
running_pid() {
    local name="$1" marker="$2" file pid state
    file="$(pid_file "$name")"
    [ -f "$file" ] || return 1
    pid="$(tr -dc '0-9' <"$file")"
    [ -n "$pid" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    [ "$state" != Z ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
    printf '%s\n' "$pid"
}

# Starts "$@" in its own session (so a Ctrl-C in the terminal that ran `up` does not
# reach it), output appended to the component's log, pid written to its pid file.
start_background() {
    local name="$1"
    shift
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    printf '\n--- %s: starting %s\n' "$(date -u +%FT%TZ)" "$*" >>"$LOG_DIR/$name.log"
    # Not a process-group leader here, so setsid execs in place and $! is the server.
    setsid nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$(pid_file "$name")"
}

# Stops component $1 (marker $2): SIGTERM, up to STOP_TIMEOUT_SECS, then SIGKILL.
stop_component() {
    local name="$1" marker="$2" pid waited=0
    if ! pid="$(running_pid "$name" "$marker")"; then
        rm -f "$(pid_file "$name")"
        say "$name: not running"
        return 0
    fi
    say "$name: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while running_pid "$name" "$marker" >/dev/null; do
        if [ "$waited" -ge "$STOP_TIMEOUT_SECS" ]; then
            warn "$name did not stop within ${STOP_TIMEOUT_SECS}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$(pid_file "$name")"
    say "$name: stopped"
}

# Polls the command "$@" until it succeeds or START_TIMEOUT_SECS pass; while waiting,
# gives up early when component $1 (marker $2) has died. Prints the log tail on failure.
wait_until() {
    local name="$1" marker="$2" deadline
    shift 2
    deadline=$((SECONDS + START_TIMEOUT_SECS))
    until "$@"; do
        if ! running_pid "$name" "$marker" >/dev/null; then
            show_log_tail "$name"
            die "$name exited during start-up (log: ${LOG_DIR#"$ROOT"/}/$name.log)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log_tail "$name"
            die "$name did not become ready within ${START_TIMEOUT_SECS}s (log: ${LOG_DIR#"$ROOT"/}/$name.log)"
        fi
        sleep 0.5
    done
}

# Prints the end of component $1's log, from its latest start only, and of its error
# log (ClickHouse keeps one) if there is one.
show_log_tail() {
    local name="$1"
    local log="$LOG_DIR/$name.log" error_log="$LOG_DIR/$name.err.log"
    if [ -s "$log" ]; then
        printf -- '--- last lines of %s\n' "${log#"$ROOT"/}" >&2
        awk '/^--- .*: starting / { n = 0 } { lines[n++] = $0 } END { for (i = (n > 30 ? n - 30 : 0); i < n; i++) print lines[i] }' \
            "$log" >&2
    fi
    if [ -s "$error_log" ]; then
        printf -- '--- last lines of %s\n' "${error_log#"$ROOT"/}" >&2
        tail -n 10 "$error_log" >&2
    fi
}

http_ok() {
    curl -fsS --max-time 2 -o /dev/null "$1" 2>/dev/null
}
