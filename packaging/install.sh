#!/usr/bin/env bash
# Install Steward as a systemd service: the executable, the unit, the state directory and the
# master key as a systemd credential. Run as root from the project root after `make dist`:
#     sudo packaging/install.sh [path/to/dist/steward]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exe="${1:-$here/../dist/steward}"
prefix="${PREFIX:-/usr/local}"
unit_dir="${UNIT_DIR:-/etc/systemd/system}"
credstore="${CREDSTORE:-/etc/credstore}"
state="${STATE_DIR:-/var/lib/steward}"

[ -x "$exe" ] || { echo "install.sh: $exe is not an executable; run \`make dist\` first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it writes $unit_dir and $credstore)" >&2; exit 1; }

install -D -m 0755 "$exe" "$prefix/bin/steward"
install -D -m 0644 "$here/steward.service" "$unit_dir/steward.service"
install -d -m 0700 "$credstore"
if [ ! -s "$credstore/steward-master-key" ]; then
  umask 077
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$credstore/steward-master-key"
  echo "created a new master key in $credstore/steward-master-key (0600, root only)"
fi
install -d -m 0700 "$state"
if [ ! -e "$state/steward.toml" ]; then
  STEWARD_HOME="$state" STEWARD_MASTER_KEY="$(cat "$credstore/steward-master-key")" \
    "$prefix/bin/steward" init --key-store file >/dev/null
  rm -f "$state/master.key"   # the key lives in the credential store, not in the home
  echo "initialised $state; create gateway keys with: sudo STEWARD_HOME=$state \\"
  echo "    STEWARD_MASTER_KEY=\$(sudo cat $credstore/steward-master-key) steward keys add NAME"
fi
cat <<MSG
Installed. Start it with:
    systemctl daemon-reload
    systemctl enable --now steward
    systemctl status steward        # "Status:" shows requests served and backlog
    journalctl -u steward -f
MSG
