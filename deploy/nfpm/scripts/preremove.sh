#!/bin/sh
# aegis-edge preremove: stop and disable the daemon. On an upgrade (deb "upgrade",
# rpm $1 >= 1) it is left running; postinstall restarts it.
set -e
root="${DPKG_ROOT:-${AEGIS_PKG_ROOT:-}}"
case "$1" in
  upgrade|1|2) exit 0 ;;
esac
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now aegis-edged.service || true
fi
exit 0
