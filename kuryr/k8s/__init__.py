"""The Kubernetes controller: watches the API server, keeps Neutron in step."""
