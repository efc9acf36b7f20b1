#!/bin/sh
# Installs iotgw as a systemd service: the binary, the unit, a configuration and a system user.
#
#   sudo deploy/install.sh [BINARY] [CONFIG]
#
# BINARY defaults to .build/release/iotgw (build it with `swift build -c release`), CONFIG to
# Configs/production.yaml. An existing /etc/iotgw/iotgw.yaml is kept (the new one is written next to it
# as iotgw.yaml.new). Set DESTDIR to install into a staging root instead of / (no user is created and
# systemd is not touched then). Idempotent: run it again to upgrade the binary and the unit.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
binary=${1:-$repo/.build/release/iotgw}
config=${2:-$repo/Configs/production.yaml}
destdir=${DESTDIR:-}

[ -x "$binary" ] || { echo "install.sh: no executable at $binary (swift build -c release)" >&2; exit 1; }
[ -f "$config" ] || { echo "install.sh: no configuration at $config" >&2; exit 1; }
if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or set DESTDIR for a staging install)" >&2
    exit 1
fi

# Refuse a configuration the binary would refuse at start-up.
"$binary" check-config "$config"

# The service user: no home, no shell, no login.
if [ -z "$destdir" ] && ! getent passwd iotgw >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/iotgw --shell /usr/sbin/nologin iotgw
fi

install -d -m 0755 "$destdir/usr/local/bin" "$destdir/etc/systemd/system" "$destdir/usr/local/share/doc/iotgw"
install -d -m 0755 "$destdir/etc/iotgw"
install -m 0755 "$binary" "$destdir/usr/local/bin/iotgw"
install -m 0644 "$here/iotgw.service" "$destdir/etc/systemd/system/iotgw.service"
install -m 0644 "$repo/README.md" "$destdir/usr/local/share/doc/iotgw/README.md"
install -m 0644 "$repo/Configs/iotgw.schema.json" "$destdir/usr/local/share/doc/iotgw/iotgw.schema.json"
if [ -e "$destdir/etc/iotgw/iotgw.yaml" ]; then
    install -m 0640 "$config" "$destdir/etc/iotgw/iotgw.yaml.new"
    echo "install.sh: kept /etc/iotgw/iotgw.yaml; the new configuration is /etc/iotgw/iotgw.yaml.new"
else
    # The file may hold the admin token: readable by root and the service group only.
    install -m 0640 "$config" "$destdir/etc/iotgw/iotgw.yaml"
fi
if [ -z "$destdir" ]; then
    chgrp iotgw /etc/iotgw/iotgw.yaml /etc/iotgw/iotgw.yaml.new 2>/dev/null || true
    systemctl daemon-reload
    systemctl enable iotgw.service
    echo "install.sh: installed. Start with: systemctl start iotgw; reload with: systemctl reload iotgw"
else
    echo "install.sh: staged under $destdir"
fi
