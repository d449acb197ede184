"""Owner labels of real processes, for tests of what happens to a dead owner's lease."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cargohold.leases import owner


def dead_owner_labels(purpose: str = "images import big.tar") -> dict[str, str]:
    """The owner labels a child process wrote for itself before it exited (and was reaped)."""
    code = ("import json; from cargohold.leases.owner import owner_labels as o; "
            f"print(json.dumps(o({purpose!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    labels = json.loads(out)
    assert owner.state(labels) is owner.State.DEAD
    return labels
