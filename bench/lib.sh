# Helpers shared by bench/run and bench/cache. Sourced, not run: the caller has cd'd to the
# workspace root, set BENCH_NAME (for messages) and `set -euo pipefail`.
#
# Globals it uses or sets: TMP, PIDS, KEEP_TMP, DONE, PORT, WRK_PID, ONLY, NGINX, TARGET,
# SERVER_CPU, CLIENT_CPU.

SERVER_CPU=0
CLIENT_CPU=1

want() { [[ $ONLY == all || $ONLY == "$1" ]]; }

log() { printf '== %s\n' "$*" >&2; }
die() {
    printf '%s: %s\n' "${BENCH_NAME:-bench}" "$*" >&2
    exit 1
}

# Seconds in a wrk duration (10s, 2m, 1h, or a bare number of seconds).
secs() {
    local d=$1
    case $d in
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *) echo "$d" ;;
    esac
}

# ---------------------------------------------------------------- processes and cleanup

# A process is alive if it exists and is not a zombie.
alive() {
    local st
    [[ -r /proc/$1/stat ]] || return 1
    read -r _ _ st _ <"/proc/$1/stat" 2>/dev/null || return 1
    [[ $st != Z ]]
}

# Stop one process we started (and the children it had, e.g. nginx's worker or keel's
# workers): SIGTERM, up to 3 s grace, then SIGKILL. Only ever by PID.
stop_pid() {
    local pid=$1 kids k i
    [[ -n $pid ]] || return 0
    if alive "$pid"; then
        kids=$(pgrep -P "$pid" || true)
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 30); do
            alive "$pid" || break
            sleep 0.1
        done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
        for k in $kids; do
            for i in $(seq 10); do
                alive "$k" || break
                sleep 0.1
            done
            alive "$k" && kill -KILL "$k" 2>/dev/null || true
        done
    fi
    wait "$pid" 2>/dev/null || true
    # Forget it, so that cleanup never signals a PID the system has reused since.
    local keep=() x
    for x in "${PIDS[@]}"; do [[ $x == "$pid" ]] || keep+=("$x"); done
    PIDS=("${keep[@]}")
}

# Exit trap. A script may define cleanup_before (run first) and cleanup_after (run once
# every PID in PIDS is stopped).
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    declare -F cleanup_before >/dev/null && cleanup_before
    while ((${#PIDS[@]} > 0)); do
        stop_pid "${PIDS[${#PIDS[@]} - 1]}"
    done
    declare -F cleanup_after >/dev/null && cleanup_after
    if [[ $KEEP_TMP == 1 || ($rc -ne 0 && -z ${DONE:-}) ]]; then
        echo "(temp files kept in $TMP)" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}

# Makes the temp dir and installs the traps.
bench_setup() {
    TMP=$(mktemp -d /tmp/keel-bench.XXXXXX)
    PIDS=() # every process this script started, in start order
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    USED_PORTS=" "
    RANDOM=$$
}

# Sets PORT to a TCP port on 127.0.0.1 that nobody listens on and that this run has not
# handed out yet. (Not called in $(...): the list of used ports and RANDOM's state must
# survive the call.)
free_port() {
    local p i
    for i in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            PORT=$p
            return 0
        fi
    done
    die "no free port found"
}

# wait_http_ok PORT PID WHAT [PATH]: wait until GET PATH (default /) on 127.0.0.1:PORT
# answers 200 (10 s max), while process PID lives.
wait_http_ok() {
    local port=$1 pid=$2 what=$3 path=${4:-/} i code
    for i in $(seq 100); do
        alive "$pid" || die "$what exited before answering on port $port"
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port$path" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    die "$what did not answer GET $path with 200 on port $port within 10 s (last: ${code:-none})"
}

# ---------------------------------------------------------------- tools and build

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Installs wrk (and nginx when this run wants it) from Debian packages if missing; checks
# taskset, curl and the CPU count. Sets NGINX.
ensure_tools() {
    local pkg made_policy ncpu
    NGINX=$(command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)
    if ! command -v wrk >/dev/null || { want nginx && [[ -z $NGINX ]]; }; then
        log "installing nginx and wrk (Debian packages)"
        as_root apt-get update -qq
        pkg=nginx
        if apt-cache show nginx-light >/dev/null 2>&1; then pkg=nginx-light; fi
        # Keep the package's maintainer scripts from starting the system nginx service.
        made_policy=0
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            as_root sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
            made_policy=1
        fi
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" wrk || {
            [[ $made_policy == 1 ]] && as_root rm -f /usr/sbin/policy-rc.d
            die "apt-get install failed"
        }
        [[ $made_policy == 1 ]] && as_root rm -f /usr/sbin/policy-rc.d
        NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    fi
    command -v taskset >/dev/null || die "taskset (util-linux) is needed"
    command -v curl >/dev/null || die "curl is needed"
    ncpu=$(nproc --all)
    ((ncpu >= 2)) || die "need 2 CPUs (server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU), have $ncpu"
}

# cargo build --release of the given -p arguments, unless BENCH_NO_BUILD=1.
build() {
    if [[ ${BENCH_NO_BUILD:-0} == 1 ]]; then
        log "BENCH_NO_BUILD=1: using the binaries already in $TARGET/release"
    else
        log "cargo build --release $*"
        cargo build --release "$@"
    fi
}

# The line describing the machine, for the top of the output.
machine_line() {
    echo "$(nproc --all) CPUs: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), kernel $(uname -r)"
}

# ---------------------------------------------------------------- wrk

# run_wrk OUTFILE CONNECTIONS DURATION PORT [PATH]: wrk on CLIENT_CPU, bounded by timeout(1).
run_wrk() {
    local out=$1 conns=$2 dur=$3 port=$4 path=${5:-/}
    timeout -k 5 $(($(secs "$dur") + 30)) \
        taskset -c "$CLIENT_CPU" wrk -t1 -c"$conns" -d"$dur" --latency "http://127.0.0.1:$port$path" \
        >"$out" 2>&1 || true
}

# The same in the background: WRK_PID is timeout(1)'s PID (it passes SIGTERM on to wrk).
start_wrk() {
    local out=$1 conns=$2 dur=$3 port=$4 path=${5:-/}
    timeout -k 5 $(($(secs "$dur") + 30)) \
        taskset -c "$CLIENT_CPU" wrk -t1 -c"$conns" -d"$dur" --latency "http://127.0.0.1:$port$path" \
        >"$out" 2>&1 &
    WRK_PID=$!
    PIDS+=("$WRK_PID")
}

# Fields: rps p50_ms p99_ms requests non2xx connect read write timeout
parse_wrk() {
    awk '
    function ms(v,   n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n
        if (u == "s")  return n * 1000
        if (u == "m")  return n * 60000
        if (u == "h")  return n * 3600000
        return n
    }
    BEGIN { rps = 0; p50 = -1; p99 = -1; reqs = 0; non = 0; c = 0; r = 0; w = 0; t = 0 }
    /^Requests\/sec:/           { rps = $2 }
    $1 == "50%"                 { p50 = ms($2) }
    $1 == "99%"                 { p99 = ms($2) }
    / requests in /             { reqs = $1 }
    /Non-2xx or 3xx responses:/ { non = $NF }
    /Socket errors:/            { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
    END { printf "%.2f %.3f %.3f %d %d %d %d %d %d\n", rps, p50, p99, reqs, non, c, r, w, t }
    ' "$1"
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) printf "%.3f\n", a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# paired "A1 A2 ..." "B1 B2 ...": each round's A / B (the two ran back to back in that
# round), as "r1 r2 ...". The machine's speed drifts between rounds by more than the
# differences measured here; a ratio within one round cancels most of that drift.
paired() {
    paste <(tr ' ' '\n' <<<"$1" | sed '/^$/d') <(tr ' ' '\n' <<<"$2" | sed '/^$/d') |
        awk '$2 > 0 { printf "%s%.2f", (n++ ? " " : ""), $1 / $2 } END { print "" }'
}

# ---------------------------------------------------------------- CPU time

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# cpu_ticks PID...: utime + stime of these processes (all their threads, live and exited),
# in clock ticks, from /proc/PID/stat fields 14 and 15. A process that is gone counts 0.
cpu_ticks() {
    local pid stat rest total=0
    local -a f
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) } # comm may hold spaces and parentheses: cut after the last ')'
        read -r -a f <<<"$rest"
        # rest starts at field 3 (state): utime (14) is f[11], stime (15) is f[12].
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# nginx_worker_pids MASTER_PID: the master's "nginx: worker process" children (not the
# cache manager or loader).
nginx_worker_pids() {
    local k
    for k in $(pgrep -P "$1" || true); do
        tr '\0' ' ' <"/proc/$k/cmdline" 2>/dev/null | grep -q 'worker process' && echo "$k"
    done
    return 0
}

# cpus_busy CPU...: ticks the given CPUs spent not idle (user, nice, system, irq, softirq)
# plus steal (the hypervisor running someone else), from /proc/stat.
cpus_busy() {
    local want=" $* "
    awk -v want="$want" '$1 ~ /^cpu[0-9]+$/ && index(want, " " substr($1, 4) " ") {
        t += $2 + $3 + $4 + $7 + $8 + $9 } END { print t + 0 }' /proc/stat
}

# children_ticks FILE: the children's user+system time from the output of the `times`
# builtin (its second line, like "0m1.230s 0m0.450s"), in clock ticks. Call `times >FILE`
# in the script's own shell (not in $(...)) so that it reports the script's children.
children_ticks() {
    awk -v hz="$CLK_TCK" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] }
        printf "%.0f\n", t * hz }' "$1"
}
