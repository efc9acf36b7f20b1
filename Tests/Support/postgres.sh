#!/bin/sh
# A throwaway PostgreSQL server for the tests, on 127.0.0.1 only, in a directory of its own.
#
#   Tests/Support/postgres.sh start DIR [PORT]   initdb DIR/data, start the server (PORT: a free one when
#                                                omitted or 0), create the database; prints the env lines
#   Tests/Support/postgres.sh env DIR            prints `export IOTGW_TEST_POSTGRES_URL=...` for DIR's server
#   Tests/Support/postgres.sh stop DIR           stops DIR's server (pg_ctl stop -m fast); safe to repeat
#   Tests/Support/postgres.sh restart DIR        starts DIR's stopped server again on the same port
#
# The cluster has one role, `iotgw` (password `iotgw`, SCRAM over TCP so the client's authentication
# is exercised), a database `iotgw_test`, and its unix socket in DIR (never /var/run/postgresql).
# initdb refuses to run as root: as root, DIR is handed to the `postgres` user and the server runs as
# that user. The binaries are found with pg_config, in /usr/lib/postgresql/*/bin, or on PATH.
set -eu

usage() {
    echo "usage: $0 start DIR [PORT] | env DIR | stop DIR | restart DIR" >&2
    exit 2
}

[ $# -ge 2 ] || usage
command=$1
dir=$2

find_bindir() {
    if command -v pg_config >/dev/null 2>&1; then
        candidate=$(pg_config --bindir 2>/dev/null || true)
        if [ -n "$candidate" ] && [ -x "$candidate/initdb" ]; then
            echo "$candidate"
            return
        fi
    fi
    # Debian: the newest installed major version.
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ]; then
            echo "$candidate"
            return
        fi
    done
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return
    fi
    echo "postgres.sh: no PostgreSQL server binaries (initdb, pg_ctl) found; install Debian's postgresql" >&2
    exit 1
}

# Runs a command as the user that owns the cluster: `postgres` when we are root, else ourselves.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

print_env() {
    port=$(cat "$dir/port")
    echo "export IOTGW_TEST_POSTGRES_URL=postgres://iotgw:iotgw@127.0.0.1:$port/iotgw_test"
    echo "export IOTGW_TEST_POSTGRES_DIR=$dir"
}

pg_start() {
    bindir=$1
    port=$(cat "$dir/port")
    # -k: the socket lives in DIR; listen_addresses: loopback only; fsync stays on (the durability tests
    # kill the gateway, not the server, but the server's own defaults are what production runs).
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >/dev/null
}

case "$command" in
start)
    port=${3:-0}
    [ "$port" = 0 ] && port=$(free_port)
    bindir=$(find_bindir)
    mkdir -p "$dir"
    echo "$port" >"$dir/port"
    echo "$bindir" >"$dir/bindir"
    printf 'iotgw\n' >"$dir/pwfile"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$dir"
        chmod 700 "$dir"
    fi
    as_owner "$bindir/initdb" -D "$dir/data" -U iotgw --pwfile="$dir/pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    pg_start "$bindir" || {
        cat "$dir/server.log" >&2
        exit 1
    }
    as_owner "$bindir/createdb" -h "$dir" -p "$port" -U iotgw iotgw_test
    print_env
    ;;
restart)
    [ -f "$dir/port" ] || { echo "postgres.sh: no server in $dir" >&2; exit 1; }
    pg_start "$(cat "$dir/bindir")"
    ;;
env)
    [ -f "$dir/port" ] || { echo "postgres.sh: no server in $dir" >&2; exit 1; }
    print_env
    ;;
stop)
    if [ -f "$dir/bindir" ] && [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
    fi
    ;;
*)
    usage
    ;;
esac
