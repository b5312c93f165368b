"""The Docker libnetwork remote network and IPAM driver: front end of the core."""
