"""The CRI runtime: pods that containerd or CRI-O run for a kubelet, read
(never created or removed) through the Container Runtime Interface v1.

C{api_pb2*} are generated from C{api.proto} by C{scripts/cri-stubs.sh}."""
