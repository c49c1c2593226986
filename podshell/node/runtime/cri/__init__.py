"""The CRI runtime: pods that containerd or CRI-O run for a kubelet, read
(never created or removed) through the Container Runtime Interface v1.

C{api_pb2*} are generated from C{api.proto} by C{scripts/cri-stubs.sh}."""

import os

# The spawner forks with its main thread in a container's pid namespace; gRPC's
# fork handlers would restart gRPC's threads there, fail (EINVAL) and retry for
# seconds, or abort.  Forked children never use gRPC: no fork handlers.  Read
# when grpc is first imported, which every path here does after this package.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
