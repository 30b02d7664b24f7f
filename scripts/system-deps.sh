#!/usr/bin/env bash
# Debian packages the test suite uses beyond PyPI: chromium (the report opened in a real browser) and
# postgresql (the team set-up on PostgreSQL). Installs what is missing with apt-get when it can (root or
# passwordless sudo). --strict (CI): fail if it cannot; otherwise say what is missing (those tests skip).
set -uo pipefail
strict=0; [ "${1:-}" = "--strict" ] && strict=1
missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else sudo=(none); fi
if [ "${sudo[0]:-}" != none ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]}"
  if "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq "${missing[@]}" >/dev/null; then
    exit 0
  fi
fi
echo "note: missing Debian packages ${missing[*]} (apt-get install ${missing[*]}); their tests will skip" >&2
[ $strict = 1 ] && exit 1
exit 0
