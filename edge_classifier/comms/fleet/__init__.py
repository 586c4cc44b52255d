"""The fleet: devices of one group learning together through the MQTT broker.

::

    [fleet]
    group = "shop"
    key_file = "/etc/edge-classifier/fleet.key"

``replica.py`` is the replicated data type (a two-phase set of samples with tombstones and
last-writer-wins class names), ``sync.py`` keeps the store and the replica in step on the loop
thread (and in ``fleet.json``), ``wire.py`` signs and checks messages, ``transport.py`` is
the transport on the device's bus, and ``entropy.py`` / ``upkeep.py`` are its digests
(anti-entropy while connected), acknowledgements and tombstone compaction.
"""

from edge_classifier.comms.fleet.replica import Replica
from edge_classifier.comms.fleet.sync import FleetSync
from edge_classifier.comms.fleet.transport import FleetTransport, FleetWork
from edge_classifier.comms.fleet.wire import Wire

__all__ = ["FleetSync", "FleetTransport", "FleetWork", "Replica", "Wire"]
