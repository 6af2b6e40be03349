"""What the nodes of one run say to each other outside collectives.

With one process per node (:mod:`disco_jax.launch`) the nodes meet and
compare values through jax's coordination service (the gRPC service node 0
hosts), not through a collective: :func:`barrier` waits for every node
however long one needs to load or compile, and :func:`share` hands every node
every node's value (a plan's checksum, the mesh size), so that they can check
that they agree before anything travels. With one process both do nothing.
"""

from __future__ import annotations

import itertools
import os

TIMEOUT_S = 600
"""Seconds a node waits for the others unless ``$DISCO_BARRIER_TIMEOUT`` says otherwise."""
TIMEOUT_VARIABLE = "DISCO_BARRIER_TIMEOUT"
"""Set by ``python -m disco_jax.launch --barrier-timeout`` for its nodes."""


def _timeout() -> float:
    return float(os.environ.get(TIMEOUT_VARIABLE, TIMEOUT_S))


def first_line(err: BaseException) -> str:
    """``Type: the first line of the message`` of a runtime error, for one-line reports."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


_meetings = itertools.count()  # every node meets in the same order: the same numbers


def _client():
    from jax._src import distributed  # no public API offers its barrier and key-value store

    return distributed.global_state.client


def barrier(purpose: str, timeout_s: float | None = None) -> None:
    """Waits until every node of the run has reached this point.

    The wait goes through jax's coordination service, not a collective, so it
    may last as long as one node needs (``timeout_s``, default
    ``$DISCO_BARRIER_TIMEOUT`` or :data:`TIMEOUT_S`); every node must call it
    the same number of times in the same order. With one process it does
    nothing.

    Raises:
      MeshError: not every node arrived in time, or one has stopped.
    """
    import jax

    from disco_jax.errors import MeshError

    if jax.process_count() == 1:
        return
    timeout = _timeout() if timeout_s is None else timeout_s
    try:
        _client().wait_at_barrier(f"disco_jax/{next(_meetings)}/{purpose}",
                                  int(timeout * 1000))
    except Exception as err:  # the runtime's own error types
        raise MeshError(f"node {jax.process_index()}: not every node reached '{purpose}' "
                        f"within {timeout:g} s ({first_line(err)}). Another node has stopped "
                        "or is still busy; if it is only slow, raise --barrier-timeout.") from None


def share(purpose: str, value: str, timeout_s: float | None = None) -> list[str]:
    """Every node's ``value``, in node order, through the coordination service.

    Nodes use it to check that they agree (on a plan's checksum, the mesh
    size) before anything travels between them. With one process it returns
    ``[value]``. Every node must call it the same number of times in the same
    order.

    Raises:
      MeshError: a node did not give its value in time.
    """
    import jax

    from disco_jax.errors import MeshError

    if jax.process_count() == 1:
        return [value]
    timeout = _timeout() if timeout_s is None else timeout_s
    client, prefix = _client(), f"disco_jax/{next(_meetings)}/{purpose}"
    client.key_value_set(f"{prefix}/{jax.process_index()}", value)
    values = []
    for node in range(jax.process_count()):
        try:
            values.append(client.blocking_key_value_get(f"{prefix}/{node}", int(timeout * 1000)))
        except Exception as err:  # the runtime's own error types
            raise MeshError(f"node {jax.process_index()}: node {node} did not say its "
                            f"{purpose} within {timeout:g} s ({first_line(err)}); it has "
                            "stopped or is still busy.") from None
    return values
