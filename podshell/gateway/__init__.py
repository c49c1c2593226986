"""The gateway side: front doors (SSH, the Kubernetes API) and the access
checks every one of them goes through."""
