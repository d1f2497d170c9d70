#!/usr/bin/env bash
# Install what the SLURM tests start: Debian's slurm-wlm (slurmctld, slurmd, clients) and munge.
# Idempotent: exits at once when all the commands are already there.
set -euo pipefail

# Debian installs the daemons under /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin:/usr/bin:/bin"

missing=()
for cmd in slurmctld slurmd munged mungekey sbatch; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$EUID" -ne 0 ]; then
    echo "install_slurm.sh: ${missing[*]} missing; run as root to apt-get install slurm-wlm munge" >&2
    exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } \
    >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "install_slurm.sh: apt-get install slurm-wlm munge failed (apt's output above)" >&2
    exit 1
fi
echo "install_slurm.sh: installed slurm-wlm and munge"
