"""Random (version 4) UUIDs, as ``uuid.uuid4()`` makes them, for every event and request.

# NOTE: ``uuid.uuid4()`` reads 16 bytes from the OS per call and builds a ``UUID`` object; under
# batch load that system call and the object were a tenth of the service's CPU (py-spy). Here
# the same source, ``os.urandom``, is read for many ids at once, and the canonical text is
# formatted straight from the bytes. A deque's ``popleft`` is atomic, so threads may share it.

Synopsis::

    new_uuid()        # 'a3bb189e-8bf9-4888-9912-ace4e6543002'
    new_uuid_hex()    # 'a3bb189e8bf948889912ace4e6543002'
"""

from __future__ import annotations

import collections
import os

__all__ = ["new_uuid", "new_uuid_hex"]

#: How many ids one read of the OS's random source provides.
IDS_PER_READ = 256

_ID_BYTES = 16

#: Random bytes of the ids still to be handed out, 16 per id.
_unused: collections.deque[bytes] = collections.deque()

#: The RFC 4122 variant digit (binary ``10xx``) for each value of the two bits it leaves random.
_VARIANT_DIGITS = "89ab"


def new_uuid() -> str:
    """A random UUID in canonical form: lowercase hex, 8-4-4-4-12, version 4, RFC 4122 variant."""
    digits = _random_bytes().hex()
    variant = _VARIANT_DIGITS[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


def new_uuid_hex() -> str:
    """:func:`new_uuid` without its dashes, as ``uuid.uuid4().hex`` gives it."""
    return new_uuid().replace("-", "")


def _random_bytes() -> bytes:
    try:
        return _unused.popleft()
    except IndexError:
        chunk = os.urandom(_ID_BYTES * IDS_PER_READ)
        _unused.extend(chunk[at : at + _ID_BYTES] for at in range(_ID_BYTES, len(chunk), _ID_BYTES))
        return chunk[:_ID_BYTES]
