#!/usr/bin/env bash
# Renders SAMPLE_DIR/report.html (written by `wgsl-diff sample --uncertainty --report`) in
# headless Chromium and saves SAMPLE_DIR/report.png, failing if nothing was rendered.
# Needs Debian's chromium package: apt-get install -y chromium
set -euo pipefail
dir=${1:?usage: tools/screenshot_report.sh SAMPLE_DIR}
page="$(realpath "$dir")/report.html"
[ -f "$page" ] || { echo "no report.html in $dir" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1280,1400 \
    --screenshot="$(realpath "$dir")/report.png" "file://$page" 2>/dev/null
[ -s "$dir/report.png" ] || { echo "Chromium wrote no screenshot" >&2; exit 1; }
echo "screenshot: $dir/report.png"
