#!/usr/bin/env bash
# Fetch ReDoc's standalone bundle again into the gateway package (gateway/src/smartedit_gateway/vendor/redoc),
# from the npm registry, and check it is the file the gateway was tested with.
# Why vendored, not installed: see gateway/src/smartedit_gateway/pages.py (no PyPI package from ReDoc's
# authors; the gateway installs with pip alone). To move to another version, change both lines below.
set -euo pipefail
VERSION=2.5.4
SHA256=dcaf76612bc4a3fbcc923a8966dee2f6146a5f32e5ce1b6f02dd60cbbf89500b
cd "$(dirname "$0")/.."
target=gateway/src/smartedit_gateway/vendor/redoc
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "redoc@$VERSION" >/dev/null && tar xzf "redoc-$VERSION.tgz")
echo "$SHA256  $work/package/bundles/redoc.standalone.js" | sha256sum --check --quiet
mkdir -p "$target"
cp "$work/package/bundles/redoc.standalone.js" "$work/package/bundles/redoc.standalone.js.LICENSE.txt" "$target/"
cp "$work/package/LICENSE" "$target/LICENSE"
echo "ReDoc $VERSION in $target"
