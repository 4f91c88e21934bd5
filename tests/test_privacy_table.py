"""benchmarks/privacy_table.py --quick: a row for every registered protocol (issue 17)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("privacy_table",
                                                  ROOT / "benchmarks" / "privacy_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_table_has_a_row_for_every_registered_protocol(capsys):
    from crowdlearn import registry
    mod = _module()
    assert mod.protocols() == list(registry.names())
    assert mod.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| protocol")
            and not line.startswith("| ---")]
    by_proto: dict = {}
    for r in rows:
        by_proto.setdefault(r[0].lstrip("| ").split(" + ")[0], []).append(r)
    assert set(by_proto) == set(registry.names())
    number = re.compile(r"^-?\d+\.\d+ ± \d+\.\d+")
    for proto, rs in by_proto.items():
        for r in rs:
            if "cannot run" in r[-1] or "no round completed" in r[-1]:
                continue                              # said so in the row, with the reason
            assert number.match(r[2]) and number.match(r[3]), (proto, r)   # accuracy, bytes
            assert r[7] != "—" and number.match(r[6]), (proto, r)         # score, baseline
    # the observers a protocol exposes: the DSSGD / FedAvg server sees uploads
    for proto in ("dssgd", "fedavg"):
        observers = [r[1] for r in by_proto[proto]]
        assert "server, from each upload" in observers
        up = next(r for r in by_proto[proto] if r[1] == "server, from each upload")
        assert "random public image" in up[7] and "public mean" in up[7]
    dp = [r for r in rows if r[0].lstrip("| ") == "dssgd + dp"]
    assert dp and all(number.match(r[4]) for r in dp)                     # ε where DP
    assert all(r[4] == "no DP" for r in by_proto["fedavg"])
