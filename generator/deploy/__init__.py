"""Deployment: the embedded server, the distributed topology, the local topology and Kubernetes manifests."""
