# Throwaway PostgreSQL 15 instances on loopback, run as user postgres
# (initdb refuses root). Source this file; every function is idempotent
# enough to be called from tests, the demo and the benchmarks.

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PG_USER=${PG_USER:-postgres}

as_pg() {
    if [ "$(id -un)" = "$PG_USER" ]; then "$@"; else runuser -u "$PG_USER" -- "$@"; fi
}

# pg_up DIR PORT [extra postgresql.conf lines...]: initdb (if needed) and start.
pg_up() {
    local dir=$1 port=$2; shift 2
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir" && chown "$PG_USER" "$dir"
        as_pg "$PGBIN/initdb" -D "$dir" -A trust -U postgres --no-sync >"$dir.initdb.log" 2>&1 \
            || { cat "$dir.initdb.log"; return 1; }
        {
            echo "port = $port"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '/tmp'"
            echo "wal_level = logical"
            echo "fsync = off"
            echo "max_replication_slots = 20"
            echo "max_wal_senders = 20"
            echo "output_plugin_libraries = 'pgoutput, test_decoding, converge'"
            for line in "$@"; do echo "$line"; done
        } >>"$dir/postgresql.conf"
    fi
    as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { tail -20 "$dir/server.log"; return 1; }
}

# pg_down DIR: fast stop of the instance in DIR (if running).
pg_down() {
    local dir=$1
    [ -f "$dir/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null 2>&1
    return 0
}

# psql against a local port, quiet, stop on error.
pq() {
    local port=$1; shift
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"
}

# bench_up PORT [postgresql.conf lines...]: install the release build, start a
# fresh server on PORT in a temporary directory ($BENCH_DIR), and stop and
# remove it when the calling script exits (SKIP_INSTALL=1: measure the build
# installed already). (cargo pgrx test installs a debug build; benchmarks
# must never measure that.)
bench_up() {
    [ -n "${SKIP_INSTALL:-}" ] || cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
    BENCH_DIR=$(mktemp -d /tmp/converge-bench.XXXXXX)
    chown "$PG_USER" "$BENCH_DIR"
    trap 'pg_down "$BENCH_DIR/pg"; rm -rf "$BENCH_DIR"' EXIT
    pg_up "$BENCH_DIR/pg" "$@"
}

# three_nodes FIRST_PORT: madrid, dublin and virginia (converge preloaded,
# database postgres), on FIRST_PORT and the two after, in a fresh
# $BENCH_DIR that is stopped and removed when the calling script exits
# (KEEP=1 keeps it). Sets NODES, PORT and conninfo NODE.
three_nodes() {
    local first=$1
    [ -n "${SKIP_INSTALL:-}" ] || cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
    NODES=(madrid dublin virginia)
    declare -gA PORT=([madrid]=$first [dublin]=$((first + 1)) [virginia]=$((first + 2)))
    BENCH_DIR=$(mktemp -d /tmp/converge-nodes.XXXXXX); chown postgres "$BENCH_DIR"; chmod 755 "$BENCH_DIR"
    trap 'kill $(jobs -p) 2>/dev/null || true; for n in "${NODES[@]}"; do pg_down "$BENCH_DIR/$n"; done; [ -n "${KEEP:-}" ] || rm -rf "$BENCH_DIR"' EXIT
    for n in "${NODES[@]}"; do
        pg_up "$BENCH_DIR/$n" "${PORT[$n]}" "shared_preload_libraries = 'converge'" "converge.databases = 'postgres'" \
            "max_worker_processes = 16" || return 1
    done
}
conninfo() { echo "host=127.0.0.1 port=${PORT[$1]} user=postgres dbname=postgres"; }
