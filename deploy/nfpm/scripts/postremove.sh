#!/bin/sh
# aegis-edge postremove: on purge (deb "purge"), nothing stays: the host's private
# key, token and archive go with the state directory, and the config goes too.
# A plain remove keeps both, so a reinstall finds the host still enrolled.
set -e
root="${DPKG_ROOT:-${AEGIS_PKG_ROOT:-}}"
case "$1" in
  purge)
    rm -rf "$root/var/lib/aegis-edge"
    rm -f "$root/etc/aegis/edged.yaml"
    rmdir "$root/etc/aegis" 2>/dev/null || true
    ;;
esac
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
fi
exit 0
