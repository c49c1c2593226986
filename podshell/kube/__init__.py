"""The Kubernetes-compatible API: discovery, pods, and the exec, attach and
portforward subresources, so that stock kubectl and client libraries work."""
