"""Real test peers that tracegate's tests talk to instead of mocks.

* ``peers.envelope``  - Sentry envelope model/parser and ``EnvelopeReceiver`` (a DSN target)
* ``peers.otlp``      - ``OTLPReceiver``, an OTLP/HTTP protobuf traces endpoint
* ``peers.spans``     - ``ReceivedSpan`` and the span wait API shared by the OTLP peers
* ``peers.redis``     - ``RedisServer``, a real redis-server process
* ``peers.spotlight`` - ``SpotlightSidecar``, the real Spotlight sidecar (node)
* ``peers.oteltap``   - ``OtelTap``, the third-party oteltap receiver (not re-exported
  here: importing it loads oteltap's native library)
* ``peers.base``      - ``free_port``, ``PeerUnavailableError`` and shared plumbing
"""

from .base import PeerUnavailableError, free_port
from .envelope import Envelope, EnvelopeReceiver, Item, parse_envelope
from .otlp import OTLPReceiver
from .redis import RedisServer
from .spans import ReceivedSpan
from .spotlight import SpotlightSidecar

__all__ = [
    "Envelope",
    "EnvelopeReceiver",
    "Item",
    "OTLPReceiver",
    "PeerUnavailableError",
    "ReceivedSpan",
    "RedisServer",
    "SpotlightSidecar",
    "free_port",
    "parse_envelope",
]
