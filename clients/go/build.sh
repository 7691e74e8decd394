#!/usr/bin/env bash
# Build clients/go offline with Debian's Go packages: generate the Go code from proto/dago
# with buf (buf.gen.go.yaml) into a GOPATH of its own, then `go build` in GOPATH mode
# against the module sources Debian installs in /usr/share/gocode/src (no module proxy, no
# network). tests/clients/test_go_client.py runs this script.
#
#   clients/go/build.sh [OUT]       (OUT: build/go) -> OUT/bin/dago-example
#
# Needs: apt-get install golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
# golang-github-golang-protobuf-1-5-dev, and .venv/bin/buf (make setup) or $BUF.
# GOCACHE is honoured (default: Go's, ~/.cache/go-build).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/build/go}")"
BUF="${BUF:-$ROOT/.venv/bin/buf}"
GOCODE="${DAGO_GOCODE:-/usr/share/gocode}"
PACKAGES="golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev"

missing=()
for tool in go protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null || missing+=("$tool (not on PATH)")
done
for pkg in google.golang.org/grpc google.golang.org/protobuf google.golang.org/genproto \
    github.com/golang/protobuf/proto; do
    [[ -d "$GOCODE/src/$pkg" ]] || missing+=("$GOCODE/src/$pkg")
done
if ((${#missing[@]})); then
    printf 'clients/go/build.sh: missing %s\n' "${missing[@]}" >&2
    echo "install them: apt-get install $PACKAGES (see .ci/run)" >&2
    exit 3
fi
[[ -x "$BUF" ]] || { echo "clients/go/build.sh: no buf at $BUF: run make setup (or set BUF)" >&2; exit 3; }

# The GOPATH: OUT/gopath/src/dago.dev/clients/go/{gen,cmd} (the import paths of the code).
PKG_DIR="$OUT/gopath/src/dago.dev/clients/go"
rm -rf "$PKG_DIR"
mkdir -p "$PKG_DIR" "$OUT/bin"
(cd "$ROOT" && "$BUF" generate --template buf.gen.go.yaml --path proto/dago -o "$OUT/gopath/src/dago.dev")
cp -R "$ROOT/clients/go/cmd" "$PKG_DIR/cmd"

export GO111MODULE=off GOPATH="$OUT/gopath:$GOCODE" GOPROXY=off GOFLAGS= GOTOOLCHAIN=local
cd "$PKG_DIR"
go vet ./...
go build -o "$OUT/bin/dago-example" dago.dev/clients/go/cmd/dago-example
echo "built $OUT/bin/dago-example ($(go version))"
