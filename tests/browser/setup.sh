#!/usr/bin/env bash
# Installs what the browser test (tests/browser/web_page.test.mjs) needs beyond Debian's packages:
# playwright-core, pinned, from the npm registry into tests/browser/node_modules (git-ignored).
# It drives Debian's Chromium (the `chromium` package from scripts/install-deps.sh); Playwright's
# own browser downloads are never used. Without this step the test skips.
set -euo pipefail
cd "$(dirname "$0")"
PLAYWRIGHT_CORE_VERSION=1.65.2
if ! command -v npm >/dev/null 2>&1; then
    echo "tests/browser/setup.sh: npm not found (install Node.js with npm); the browser test will skip" >&2
    exit 1
fi
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-save --no-audit --no-fund --silent \
    --prefix . "playwright-core@${PLAYWRIGHT_CORE_VERSION}"
echo "tests/browser: playwright-core ${PLAYWRIGHT_CORE_VERSION} installed in $(pwd)/node_modules"
