#!/bin/sh
# aegis-edge postinstall: the system user, the state directory, the config's group,
# then enable (not start) the unit.
# $DPKG_ROOT (or $AEGIS_PKG_ROOT) prefixes every path, so tests run this script
# against a scratch root.
set -e
root="${DPKG_ROOT:-${AEGIS_PKG_ROOT:-}}"
user=aegis-edge
state="$root/var/lib/aegis-edge"

# The daemon's system user and group (no login, no home of its own): from the
# package's sysusers.d file where systemd-sysusers exists, else useradd.
if command -v systemd-sysusers >/dev/null 2>&1; then
  if [ -n "$root" ]; then
    systemd-sysusers --root="$root" "$root/usr/lib/sysusers.d/aegis-edge.conf"
  else
    systemd-sysusers /usr/lib/sysusers.d/aegis-edge.conf
  fi
elif ! grep -q "^$user:" "$root/etc/passwd" 2>/dev/null; then
  nologin=/usr/sbin/nologin
  [ -x "$root$nologin" ] || nologin=/sbin/nologin
  if [ -n "$root" ]; then
    useradd --prefix "$root" --system --user-group --no-create-home --home-dir /var/lib/aegis-edge --shell "$nologin" --comment "Aegis Edge daemon" "$user"
  else
    useradd --system --user-group --no-create-home --home-dir /var/lib/aegis-edge --shell "$nologin" --comment "Aegis Edge daemon" "$user"
  fi
fi
# Numeric ids from the (scratch) root's own files: chown by name would ask this
# machine's user database.
uid=$(awk -F: -v u="$user" '$1 == u { print $3 }' "$root/etc/passwd")
gid=$(awk -F: -v u="$user" '$1 == u { print $3 }' "$root/etc/group")
if [ -z "$uid" ] || [ -z "$gid" ]; then
  echo "aegis-edge: the system user $user was not created" >&2
  exit 1
fi

# The state directory belongs to the daemon, 0700 (systemd's StateDirectory= keeps
# it so). Files root writes there (sudo aegis edge enroll with the daemon stopped)
# are given to its owner by aegisctl itself.
mkdir -p "$state"
chown "$uid:$gid" "$state"
chmod 0700 "$state"
# The daemon reads its config through its group; only root edits it.
if [ -f "$root/etc/aegis/edged.yaml" ]; then
  chown "0:$gid" "$root/etc/aegis/edged.yaml"
  chmod 0640 "$root/etc/aegis/edged.yaml"
fi
# Enabled so it starts at boot once enrolled; not started now: the unit's
# ConditionPathExists waits for node.json (sudo aegis edge enroll --token T).
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
  systemctl enable aegis-edged.service || true
  # An upgrade restarts a daemon that was running.
  systemctl try-restart aegis-edged.service || true
fi
exit 0
