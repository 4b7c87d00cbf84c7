#!/usr/bin/env bash
# Installs the Debian packages that `make run` or `make test` need, only where they are missing.
# Usage: scripts/system-deps.sh run|test
set -euo pipefail

purpose=${1:-run}

# Packages the service needs at run time: WeasyPrint's libraries (Pango; HarfBuzz's subsetter, without which
# font subsetting is several times slower) and fonts for letters.
run_packages=(libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fontconfig fonts-dejavu-core)
# Packages the test suite needs on top: a PostgreSQL server and a Redis server the tests start in temp dirs,
# pdftotext to read letters back, and Debian's Chromium for the portal's browser tests (Playwright drives it;
# it never downloads a browser of its own).
test_packages=(postgresql redis-server poppler-utils chromium)

packages=("${run_packages[@]}")
if [ "$purpose" = "test" ]; then
  packages+=("${test_packages[@]}")
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "Installing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "error: these Debian packages are missing and I am not root (and there is no sudo): ${missing[*]}" >&2
  echo "Install them with: apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
