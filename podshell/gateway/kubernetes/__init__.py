"""A gateway inside a Kubernetes cluster: pods, node agents and people from its API server."""
