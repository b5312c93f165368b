"""The CNI front end: the `kuryr-cni` executable the container runtime runs for
each pod (protocol, main) and its wire contract to Kuryr's node daemon (wire)."""
