#!/bin/sh
# Runs the project's pinned Bun, installing it (from the npm registry) and the locked dependencies
# first when needed, so that a machine with only Node and npm can run every script.
set -eu
cd "$(dirname "$0")/.."
BUN_VERSION=$(node -p "require('./package.json').devDependencies.bun")
BUN=node_modules/.bin/bun
if ! "$BUN" --version >/dev/null 2>&1 || [ "$("$BUN" --version)" != "$BUN_VERSION" ]; then
  echo "installing bun $BUN_VERSION and dependencies from bun.lock" >&2
  npx --yes "bun@$BUN_VERSION" install --frozen-lockfile >&2
fi
# Cheap when node_modules already matches the lockfile; repairs it when not.
"$BUN" install --frozen-lockfile --silent >&2
exec "$BUN" "$@"
