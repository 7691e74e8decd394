#!/usr/bin/env bash
# Run clients/ruby/dago_example.rb with Debian's Ruby gRPC packages: generate the Ruby code
# from proto/dago with buf (buf.gen.ruby.yaml) into a folder of its own, then run the example
# on it (no gem download, no network). tests/clients/test_ruby_client.py runs this script.
#
#   clients/ruby/run.sh OUT [dago_example.rb arguments...]     (generated code: OUT/gen)
#
# Needs: apt-get install ruby-grpc ruby-grpc-tools ruby-googleapis-common-protos-types
# protobuf-compiler, and .venv/bin/buf (make setup) or $BUF.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="$(realpath -m "${1:?usage: clients/ruby/run.sh OUT [arguments...]}")"
shift
BUF="${BUF:-$ROOT/.venv/bin/buf}"
PACKAGES="ruby-grpc ruby-grpc-tools ruby-googleapis-common-protos-types protobuf-compiler"

missing=()
for tool in ruby protoc grpc_ruby_plugin; do
    command -v "$tool" >/dev/null || missing+=("$tool (not on PATH)")
done
if command -v ruby >/dev/null; then
    for lib in grpc google/protobuf google/rpc/error_details_pb google/api/annotations_pb; do
        ruby -e "require '$lib'" 2>/dev/null || missing+=("the Ruby library $lib")
    done
fi
if ((${#missing[@]})); then
    printf 'clients/ruby/run.sh: missing %s\n' "${missing[@]}" >&2
    echo "install them: apt-get install $PACKAGES (see .ci/run)" >&2
    exit 3
fi
[[ -x "$BUF" ]] || { echo "clients/ruby/run.sh: no buf at $BUF: run make setup (or set BUF)" >&2; exit 3; }

rm -rf "$OUT/clients/ruby/gen"
(cd "$ROOT" && "$BUF" generate --template buf.gen.ruby.yaml --path proto/dago -o "$OUT")
exec ruby -I "$OUT/clients/ruby/gen" "$ROOT/clients/ruby/dago_example.rb" "$@"
