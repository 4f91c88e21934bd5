"""Ring 0 (pure protocol, data and planning code) must not import drivers or TensorFlow."""
import subprocess
import sys

RING0 = ["crowdlearn.protocols.io", "crowdlearn.protocols.wire", "crowdlearn.protocols.messages",
         "crowdlearn.protocols.fedavg", "crowdlearn.protocols.aggregate",
         "crowdlearn.data.partition", "crowdlearn.training.models", "crowdlearn.training.batching",
         "crowdlearn.training.jobs", "crowdlearn.config", "sim.profiles", "sim.availability",
         "crowdlearn.protocols.dssgd", "crowdlearn.privacy.mechanisms",
         "crowdlearn.privacy.accountant", "crowdlearn.privacy.functional", "crowdlearn.data.quality",
         "crowdlearn.protocols.fm", "slicenet.graph", "slicenet.plan", "slicenet.partition",
         "slicenet.protocol", "crowdlearn.crypto.sealing", "crowdlearn.crypto.shamir",
         "crowdlearn.crypto.masking", "crowdlearn.crypto.keyagreement", "crowdlearn.protocols.secagg",
         "crowdlearn.privacy.dp_fedavg"]
FORBIDDEN = ["simpy", "tensorflow", "keras", "asyncio", "socket"]


def test_ring0_imports_no_driver_or_tensorflow():
    # each module is imported on its own from a clean state, which also catches circular
    # imports that only show up in one import order
    code = f"""
import importlib, sys
bad = []
for name in {RING0!r}:
    for m in [m for m in sys.modules if m.split('.')[0] in ('crowdlearn', 'sim', 'slicenet')]:
        del sys.modules[m]
    importlib.import_module(name)
    bad += [f"{{name}}:{{m}}" for m in {FORBIDDEN!r} if m in sys.modules]
print(','.join(bad))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"ring 0 imported: {out.stdout.strip()}"
