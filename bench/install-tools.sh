#!/usr/bin/env bash
# Installs the Debian packages that end-to-end tests and bench/ drive, only when missing.
set -euo pipefail
need=()
for pair in nginx:nginx haproxy:haproxy wrk:wrk curl:curl openssl:openssl strace:strace systemd-analyze:systemd promtool:prometheus chromium:chromium; do
    cmd=${pair%%:*}; pkg=${pair##*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-tools: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
        exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts nginx on port 80 after install; tests and bench run their own instances.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    systemctl stop nginx || true
fi
