"""Kuryr for Kubernetes: the CNI node daemon and the controller."""
