"""Plugging container interfaces into the host's switch, by VIF type.

``kuryr.binding.plugging.build_binder`` chooses the implementation from
[DEFAULT] port_driver at start-up; ``vif`` is the data model, ``netlink`` and
``ovs`` the host operations it is made of.  Binding never calls Neutron.
"""

from __future__ import annotations


class UnsupportedDriver(Exception):
    """[DEFAULT] port_driver names a driver this version of Kuryr does not implement.

    Raised at start-up, so that Kuryr refuses to start instead of silently
    plugging containers some other way than the one configured.
    """
