#!/usr/bin/env bash
# Install edge-classifier as a systemd service from this checkout (run as root on the Pi):
#   sudo systemd/install.sh
# Creates the edge-classifier user (groups video and gpio), a venv in /opt/edge-classifier
# that can see Raspberry Pi OS's python3-picamera2, the config /etc/edge-classifier/config.toml
# (if there is none), the models in /var/lib/edge-classifier, and enables the service.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/edge-classifier
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }

if ! python3 -c "import picamera2" 2>/dev/null; then
  echo "note: python3-picamera2 is not installed; on a Pi run: apt install python3-picamera2" >&2
fi
for group in video gpio; do getent group "$group" >/dev/null || groupadd --system "$group"; done
id edge-classifier >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-classifier \
  --shell /usr/sbin/nologin --groups video,gpio edge-classifier

python3 -m venv --system-site-packages "$prefix/venv"
"$prefix/venv/bin/pip" install --quiet "$here"

install -d -m 0750 -o root -g edge-classifier /etc/edge-classifier
if [ ! -e /etc/edge-classifier/config.toml ]; then
  "$prefix/venv/bin/edge-classifier" config --example > /etc/edge-classifier/config.toml
  chgrp edge-classifier /etc/edge-classifier/config.toml
  chmod 0640 /etc/edge-classifier/config.toml
fi
install -d -m 0750 -o edge-classifier -g edge-classifier /var/lib/edge-classifier
# Models go where the service looks for them ($STATE_DIRECTORY); a mirror folder may be given
# with EDGE_CLASSIFIER_MODEL_MIRROR for offline installs.
sudo -u edge-classifier EDGE_CLASSIFIER_HOME=/var/lib/edge-classifier \
  ${EDGE_CLASSIFIER_MODEL_MIRROR:+EDGE_CLASSIFIER_MODEL_MIRROR="$EDGE_CLASSIFIER_MODEL_MIRROR"} \
  "$prefix/venv/bin/edge-classifier" models fetch

install -m 0644 "$here/systemd/edge-classifier.service" /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now edge-classifier.service
echo "installed; follow it with: journalctl -fu edge-classifier"
