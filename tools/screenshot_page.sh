#!/usr/bin/env bash
# Renders a self-contained page of wgsl-diff — a run's report.html (`sample --report`) or a
# comparison's compare.html (`compare`) — in headless Chromium and saves a screenshot, failing
# if nothing was rendered. The screenshot goes to OUT.png, by default beside the page
# (report.png, compare.png).
# Needs Debian's chromium package: apt-get install -y chromium
#
#   tools/screenshot_page.sh RUN_DIR/report.html
#   tools/screenshot_page.sh CMP_DIR/compare.html /tmp/compare.png
set -euo pipefail
page=${1:?usage: tools/screenshot_page.sh PAGE.html [OUT.png]}
[ -f "$page" ] || { echo "no page $page" >&2; exit 1; }
page=$(realpath "$page")
out=${2:-${page%.html}.png}
out=$(realpath -m "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$out"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1280,1400 \
    --screenshot="$out" "file://$page" 2>/dev/null
[ -s "$out" ] || { echo "Chromium wrote no screenshot" >&2; exit 1; }
echo "screenshot: $out"
