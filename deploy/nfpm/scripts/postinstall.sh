#!/bin/sh
# aegis-edge postinstall: the state directory, then enable (not start) the unit.
# $DPKG_ROOT (or $AEGIS_PKG_ROOT) prefixes every path, so tests run this script
# against a scratch root.
set -e
root="${DPKG_ROOT:-${AEGIS_PKG_ROOT:-}}"
state="$root/var/lib/aegis-edge"
mkdir -p "$state"
chmod 0700 "$state"
chmod 0600 "$root/etc/aegis/edged.yaml" 2>/dev/null || true
# Enabled so it starts at boot once enrolled; not started now: the unit's
# ConditionPathExists waits for node.json (sudo aegis edge enroll --token T).
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
  systemctl enable aegis-edged.service || true
  # An upgrade restarts a daemon that was running.
  systemctl try-restart aegis-edged.service || true
fi
exit 0
