"""The Kubernetes side: the only package that may talk to a cluster (render itself is pure)."""
