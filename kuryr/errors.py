"""Errors as types; the Docker API maps each to an HTTP status in one place."""

from __future__ import annotations


class KuryrError(Exception):
    """Base class: the message is shown to the Docker user as is."""

    status = 500


class InvalidInput(KuryrError):
    """The request names something impossible (bad CIDR, address outside the subnet...)."""

    status = 400


class TooLarge(InvalidInput):
    """The request body is larger than any message Docker sends."""

    status = 413


class NotFound(KuryrError):
    """A network, subnet, pool or port the request refers to does not exist."""

    status = 404


class Conflict(KuryrError):
    """The request collides with existing state (address in use, overlapping pool...)."""

    status = 409


class StaleRevision(Conflict):
    """A compare-and-swap write lost: the resource changed since it was read."""


class BackendUnavailable(KuryrError):
    """Neutron or Open vSwitch did not answer, or answered with a server error."""

    status = 503
