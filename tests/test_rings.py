"""Ring 0 (pure protocol, data and planning code) must not import drivers or TensorFlow."""
import subprocess
import sys

RING0 = ["crowdlearn.protocols.io", "crowdlearn.protocols.wire", "crowdlearn.protocols.messages",
         "crowdlearn.protocols.fedavg", "crowdlearn.protocols.aggregate",
         "crowdlearn.data.partition", "crowdlearn.training.models", "crowdlearn.training.batching",
         "crowdlearn.training.jobs", "crowdlearn.config", "sim.profiles", "sim.availability",
         "crowdlearn.protocols.dssgd", "crowdlearn.privacy.mechanisms",
         "crowdlearn.privacy.accountant", "slicenet.graph", "slicenet.plan", "slicenet.partition",
         "slicenet.protocol", "crowdlearn.crypto.sealing"]
FORBIDDEN = ["simpy", "tensorflow", "keras", "asyncio", "socket"]


def test_ring0_imports_no_driver_or_tensorflow():
    code = ("import sys\n"
            + "".join(f"import {m}\n" for m in RING0)
            + f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
            + "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"ring 0 imported: {out.stdout.strip()}"
