"""Deployment tooling: render the kustomize overlays and check them (see k8s/README.md)."""
