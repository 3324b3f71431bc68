#!/usr/bin/env bash
# Copies the alert rules with another runbook base URL.
#
# usage: deploy/prometheus/render-rules.sh BASE_URL OUTDIR
#
# The rule files in deploy/prometheus/rules/ link every alert to
#   https://github.com/promo-detector/promo-detector/blob/main/docs/runbooks/<AlertName>.md
# (the default of the detector config key metrics.runbook_base_url). This
# writes OUTDIR/<same file names> with that base replaced by BASE_URL, e.g. an
# internal wiki or a fork, and checks the result with promtool when present:
#   deploy/prometheus/render-rules.sh https://wiki.example.com/promo/runbooks /etc/prometheus/rules
# Set metrics.runbook_base_url in the detector config to the same value.
set -euo pipefail

DEFAULT_BASE=https://github.com/promo-detector/promo-detector/blob/main/docs/runbooks
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/rules

if (($# != 2)); then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
fi
base=${1%/}
out=$2
[[ $base =~ ^https?://[^[:space:]]+$ ]] || { echo "render-rules: BASE_URL must be an http(s) URL without spaces, got '$1'" >&2; exit 2; }
[[ $(realpath -m "$out") != "$SRC" ]] || { echo "render-rules: OUTDIR must not be the source directory $SRC" >&2; exit 2; }

# Escape what is special in a sed replacement (\, & and the | delimiter).
repl=$(printf '%s' "$base" | sed -e 's/[\\&|]/\\&/g')
mkdir -p "$out"
shopt -s nullglob
files=("$SRC"/*.yml)
((${#files[@]})) || { echo "render-rules: no rule files in $SRC" >&2; exit 1; }
for f in "${files[@]}"; do
    sed -e "s|$DEFAULT_BASE/|$repl/|g" "$f" >"$out/$(basename "$f")"
done
if command -v promtool >/dev/null 2>&1; then
    promtool check rules "$out"/*.yml >/dev/null
fi
echo "render-rules: wrote ${#files[@]} rule files to $out with runbook base $base"
