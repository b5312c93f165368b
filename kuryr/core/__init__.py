"""What every front end (Docker now, CNI next) shares: a Neutron port's life
from "reserve an address" to "gone", the pool of ready ports, the ownership
rules, the background writer and the daemon that starts and stops threads."""
