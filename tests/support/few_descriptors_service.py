"""The real service with a small ``ulimit -n``: ``DESCRIPTOR_LIMIT`` becomes its soft
RLIMIT_NOFILE before ``python -m actors``'s entry point runs, as ``ulimit -n`` would in a shell.

Synopsis::

    spawn_module(services, "tests.support.few_descriptors_service",
                 env={"DESCRIPTOR_LIMIT": "256"})
"""

from __future__ import annotations

import os
import resource
import sys

from actors.__main__ import main

if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(os.environ["DESCRIPTOR_LIMIT"]), hard))
    sys.exit(main())
