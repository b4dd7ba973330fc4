#!/usr/bin/env bash
# Installs the tools the ops tests use into $STREAMER_OPS_DIR (default ~/.cache/streamer/ops),
# outside the clone, once: every step is skipped when its result is already there.
#
#   helm        helm.sh/helm/v3 built from the Go module proxy with the local Go toolchain
#   promtool,   Debian's `prometheus` package, downloaded with apt-get and unpacked here
#   prometheus  (not installed system-wide, no service started)
#   keda/       KEDA's CRDs and its Kafka scaler source, from the KEDA Go module's source
#               (the Go module proxy; go verifies it against the checksum database)
#
# Prints one line per tool. Needs `go` (1.22+) and apt-get (Debian/Ubuntu).
set -euo pipefail

OPS="${STREAMER_OPS_DIR:-$HOME/.cache/streamer/ops}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KEDA_VERSION="${KEDA_VERSION:-v2.21.0}"
mkdir -p "$OPS/bin"

GO_DIR="${STREAMER_GO_DIR:-$HOME/.cache/streamer/go}"
export GOPATH="$GO_DIR" GOMODCACHE="$GO_DIR/mod" GOCACHE="$GO_DIR/build-cache" GOFLAGS=-modcacherw
export CGO_ENABLED=0 GOTOOLCHAIN=local

need_go() {
    command -v go >/dev/null || { echo "install.sh: needs the Go toolchain (go) for $1" >&2; exit 1; }
}

# --- helm ------------------------------------------------------------------------------------
# The version stamps helm's own Makefile sets: its version, and the Kubernetes version it
# assumes without --kube-version (that of the client-go it is built with: v0.37 -> 1.37).
HELM_K8S_MINOR="${HELM_K8S_MINOR:-37}"
helm_bin="$OPS/helm-$HELM_VERSION-k8s1.$HELM_K8S_MINOR/helm"
if [ ! -x "$helm_bin" ]; then
    need_go helm
    echo "building helm $HELM_VERSION from the Go module proxy (a few minutes, once)" >&2
    x="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    for pkg in pkg/chartutil pkg/lint/rules; do
        x="$x -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
    done
    GOBIN="$(dirname "$helm_bin")" go install -ldflags="-s -w $x" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
ln -sf "$helm_bin" "$OPS/bin/helm"
echo "helm: $("$OPS/bin/helm" version --short)"

# --- promtool + prometheus (Debian package, unpacked) ------------------------------------------
if [ ! -x "$OPS/prometheus/usr/bin/promtool" ]; then
    command -v apt-get >/dev/null || { echo "install.sh: needs apt-get for Prometheus" >&2; exit 1; }
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    ( cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null; }; } )
    rm -rf "$OPS/prometheus.new"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$OPS/prometheus.new"
    rm -rf "$OPS/prometheus" && mv "$OPS/prometheus.new" "$OPS/prometheus"
fi
ln -sf "$OPS/prometheus/usr/bin/promtool" "$OPS/bin/promtool"
ln -sf "$OPS/prometheus/usr/bin/prometheus" "$OPS/bin/prometheus"
echo "prometheus: $("$OPS/bin/prometheus" --version 2>&1 | head -1)"

# --- KEDA CRDs and Kafka scaler source -------------------------------------------------------
keda="$OPS/keda-$KEDA_VERSION"
if [ ! -f "$keda/keda.sh_scaledobjects.yaml" ]; then
    need_go KEDA
    dir="$(cd "$OPS" && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    test -d "$dir" || { echo "install.sh: KEDA module source not found" >&2; exit 1; }
    mkdir -p "$keda.new"
    cp "$dir"/config/crd/bases/keda.sh_scaledobjects.yaml \
       "$dir"/config/crd/bases/keda.sh_triggerauthentications.yaml \
       "$dir"/pkg/scalers/kafka_scaler.go "$keda.new/"
    rm -rf "$keda" && mv "$keda.new" "$keda"
fi
ln -sfn "$keda" "$OPS/keda"
echo "keda: $KEDA_VERSION CRDs in $keda"
