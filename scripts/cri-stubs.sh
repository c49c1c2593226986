#!/bin/sh
# Regenerate the gRPC stubs in podshell/node/runtime/cri/: the CRI v1 from the
# Kubernetes CRI API (k8s.io/cri-api pkg/apis/runtime/v1/api.proto; tag
# v0.25.x matches containerd 1.6).  With an argument, that upstream file is
# stripped of its gogoproto options (Go code generation only; protoc cannot
# resolve them) into api.proto first; without one, the committed api.proto is
# used.  events.proto (the part of containerd's event service podshell reads)
# is our own.  Needs grpcio-tools:  pip install 'grpcio-tools>=1.60'
set -e
cd "$(dirname "$0")/.."
out=podshell/node/runtime/cri
if [ -n "$1" ]; then
    grep -v -e '^import "github.com/gogo/protobuf/gogoproto/gogo.proto";' -e '^option (gogoproto\.' "$1" > "$out/api.proto"
fi
"${PYTHON:-python3}" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. "$out/api.proto" "$out/events.proto"
