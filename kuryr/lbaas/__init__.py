"""Load balancers for Kubernetes Services: what a Service asks for
(:mod:`kuryr.lbaas.model`) and the backend that makes it (Octavia today,
:mod:`kuryr.lbaas.octavia`), behind :class:`kuryr.lbaas.model.LoadBalancerDriver`."""
