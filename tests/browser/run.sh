#!/usr/bin/env bash
# CTest entry of the browser test: runs tests/browser/web_page.test.mjs with node's test runner,
# or exits 77 (CTest's SKIP_RETURN_CODE) with one line saying what is missing: node, Debian's
# chromium (scripts/install-deps.sh) or playwright-core (bash tests/browser/setup.sh).
# Usage: run.sh LANCET_BIN ARTIFACT_DIR
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$1"
artifacts="$2"
chromium="${CHROMIUM:-$(command -v chromium || true)}"
if ! command -v node >/dev/null 2>&1; then
    echo "SKIP: node not found (apt-get install nodejs)"; exit 77
fi
if [ -z "$chromium" ]; then
    echo "SKIP: chromium not found (scripts/install-deps.sh installs Debian's chromium)"; exit 77
fi
if [ ! -f "$here/node_modules/playwright-core/package.json" ]; then
    echo "SKIP: playwright-core not installed (run: bash tests/browser/setup.sh)"; exit 77
fi
export LANCET_BIN="$bin" CHROMIUM="$chromium" LANCET_BROWSER_ARTIFACTS="$artifacts"
cd "$here"
exec node --test --test-concurrency=1 web_page.test.mjs
