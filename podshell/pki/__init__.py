"""The cluster CA, the state directory's CA, mutual TLS between gateways and node agents."""
