"""Kuryr for Kubernetes: the CNI node daemon (``kuryr cni-daemon``) and the
controller (``kuryr k8s-controller``).  The ``kuryr-cni`` executable
(kuryr/cni/) never imports this."""
