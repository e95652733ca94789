#!/usr/bin/env bash
# Install Prometheus (and promtool) from Debian's packages for tests/ecosystem/test_prometheus.py.
#
# Idempotent and never fatal: when the binary is already there, or it cannot be installed here (not root, no apt-get,
# no network), it says why and exits 0; the tests that need Prometheus then skip with a clear reason.
#
# The Debian package enables and starts a `prometheus` system service from its postinst. We only want the binaries
# (the test runs its own Prometheus on loopback), so a policy-rc.d that answers 101 ("action forbidden") is in place
# while apt runs; invoke-rc.d and deb-systemd-invoke both honour it. Any policy-rc.d that was there before is
# restored afterwards.
set -uo pipefail

say() { echo "install-prometheus: $*"; }

if command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ]; then
  say "prometheus already installed ($(command -v prometheus || echo /usr/bin/prometheus)); nothing to do"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  say "not root; cannot install the Debian package (the Prometheus tests will skip)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "apt-get not found; cannot install the Debian package (the Prometheus tests will skip)"
  exit 0
fi

POLICY=/usr/sbin/policy-rc.d
BACKUP="$POLICY.taskpatch-backup.$$"
restore_policy() {
  if [ -e "$BACKUP" ]; then
    mv -f "$BACKUP" "$POLICY"
  else
    rm -f "$POLICY"
  fi
}
if [ -e "$POLICY" ]; then
  cp -p "$POLICY" "$BACKUP"
fi
printf '#!/bin/sh\n# Written by taskpatch scripts/install-prometheus.sh: no service starts during the install.\nexit 101\n' \
  >"$POLICY"
chmod 0755 "$POLICY"
trap restore_policy EXIT

export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -q -o DPkg::Lock::Timeout=120 -o Acquire::Retries=2)
# `timeout` bounds a hung mirror; an update that fails may still leave usable package lists.
timeout 600 "${APT[@]}" update || say "apt-get update failed; trying the package lists already on disk"
if ! timeout 900 "${APT[@]}" install -y --no-install-recommends prometheus; then
  say "apt-get install prometheus failed (the Prometheus tests will skip)"
  exit 0
fi
say "installed: $(prometheus --version 2>&1 | head -n 1)"
exit 0
