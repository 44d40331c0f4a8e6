#!/usr/bin/env bash
# The README's test command (Quick start): installs what the tests need on a fresh Debian machine, then runs them all.
#   bash tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: Prometheus and promtool (end-to-end and rule tests),
# docker-compose (validates docker-compose.yml offline), openssl (test certificates). Installed only
# when missing.
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# nginx and wrk: the small versions of the benchmarks (tests/test_bench_small.py).
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# chromium: the status page drawn in a real browser (tests/test_status_page.py).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# postgresql: the shared state store's tests run a real server (tests/pg.py: initdb as postgres).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

# The simulator must agree with the shared API description when it is there (CI clones beside it).
if [ -f ../shared/distribute-api/result-schemas.json ] && \
   ! cmp -s ../shared/distribute-api/result-schemas.json tests/data/result-schemas.json; then
  echo "note: ../shared/distribute-api/result-schemas.json differs from tests/data; the tests use the shared one"
fi

# Two test processes where there are two cores or more (pytest-xdist): most tests spend their time
# waiting on the real processes they drive, so two files run at once. Whole files go to one process
# (--dist loadfile), so a module's fixtures and its tests' order stay as written. `-n 0` after it
# (e.g. `bash tests/run.sh -n 0 tests/test_x.py`) runs in one process.
workers=0
[ "$(nproc 2>/dev/null || echo 1)" -ge 2 ] && workers=2
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile "$@"
