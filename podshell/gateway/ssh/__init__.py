"""The SSH front door: ``ssh ns.pod.ctr@gateway`` with stock OpenSSH clients."""
