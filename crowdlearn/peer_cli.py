"""``crowdlearn serve`` and ``crowdlearn join``: the server and the devices of one run as separate
OS processes over TCP (the asyncio runtime, :mod:`crowdlearn.realtime`).

Examples
--------
::

    crowdlearn serve examples/default.toml --listen 127.0.0.1:7070 --out results/served
    crowdlearn join examples/default.toml --connect 127.0.0.1:7070 --device 0   # one per device

``serve`` prints ``listening on HOST:PORT`` (``--listen 127.0.0.1:0`` picks a free port), waits
until every device has joined and proved its key, runs the protocol and writes the results folder
as ``crowdlearn run`` does.  Each ``join`` builds the same run from the same config, keeps only its
own device's training shard, and exits 0 when the server ends the run (1 if the connection is
lost).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crowdlearn.errors import CrowdlearnError

__all__ = ["add_peer_parsers", "parse_address"]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port).

    >>> parse_address("127.0.0.1:7070")
    ('127.0.0.1', 7070)
    >>> parse_address("7070")
    Traceback (most recent call last):
    ...
    slicenet.errors.UserError: address '7070' is not HOST:PORT (e.g. 127.0.0.1:7070)
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise CrowdlearnError(f"address {text!r} is not HOST:PORT (e.g. 127.0.0.1:7070)")
    return host, int(port)


def _config(args):
    from crowdlearn import config as config_mod
    from crowdlearn.realtime import check_separable
    sets = list(args.set or []) + ["runtime.engine=asyncio"]
    cfg = config_mod.load(args.config, sets)
    check_separable(cfg)
    return cfg


def _tensorflow(cfg) -> None:
    from crowdlearn import registry
    from crowdlearn.cli import import_tensorflow_quietly
    if cfg.training.backend != "none" or registry.get(cfg.protocol).needs_tensorflow:
        import_tensorflow_quietly()


def _serve(args: argparse.Namespace) -> int:
    from crowdlearn.cli import _write
    from crowdlearn.results import check_out

    host, port = parse_address(args.listen)
    cfg = _config(args)
    out = Path(args.out) if args.out else Path("results") / "served"
    check_out(out, overwrite=args.overwrite)
    _tensorflow(cfg)
    from crowdlearn.experiment import Simulation
    from crowdlearn.realtime import serve

    sim = Simulation(cfg)
    if sim.driver.server is None:
        raise CrowdlearnError(f"protocol {cfg.protocol!r} has no server to serve; run it with "
                              "crowdlearn run --runtime asyncio")

    def listening(p: int) -> None:
        print(f"listening on {host}:{p}", flush=True)

    def started() -> None:
        print(f"all {len(sim.driver.machines)} nodes joined: running", flush=True)

    results = serve(sim, host=host, port=port, on_listening=listening, on_started=started)
    folder = _write(results, out, args)
    s = results.summary
    print(f"{s['protocol']}: {s['rounds_completed']} rounds, final accuracy "
          f"{s.get('final_accuracy')}, {s['bytes_total']} bytes, real {s['real_time_s']:.1f} s",
          flush=True)
    print(f"results: {folder}", flush=True)
    return 0 if s["rounds_completed"] else 3


def _join(args: argparse.Namespace) -> int:
    host, port = parse_address(args.connect)
    cfg = _config(args)
    if not 0 <= args.device < cfg.fleet.devices:
        raise CrowdlearnError(f"--device {args.device}: this run has devices 0.."
                              f"{cfg.fleet.devices - 1}")
    _tensorflow(cfg)
    from crowdlearn.realtime import join
    try:
        out = join(cfg, host=host, port=port, device=args.device)
    except ConnectionRefusedError:
        raise CrowdlearnError(f"nothing listens on {host}:{port}: start `crowdlearn serve` "
                              "first") from None
    print(json.dumps({"device": args.device, **out}), flush=True)
    return 0 if out["stopped_by"] == "stop" else 1


def add_peer_parsers(sub, *, parents) -> None:
    """Add the ``serve`` and ``join`` subcommands (one run's server and its devices as separate
    OS processes over TCP) to the CLI's subparsers ``sub``."""
    s = sub.add_parser("serve", parents=parents, help="run a run's server side over TCP; the "
                       "devices join from other processes",
                       description=__doc__.split("\n\n")[0])
    s.add_argument("config", nargs="?", help="TOML config file (omit it for all the defaults)")
    s.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:0: a free port, printed)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    s.add_argument("--out", metavar="DIR", help="results folder (default results/served)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier results folder")
    s.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    s.set_defaults(func=_serve)
    j = sub.add_parser("join", parents=parents, help="run one device of a served run",
                       description=__doc__.split("\n\n")[0])
    j.add_argument("config", nargs="?", help="the server's TOML config file")
    j.add_argument("--connect", required=True, metavar="HOST:PORT", help="the server's address")
    j.add_argument("--device", required=True, type=int, metavar="I", help="device id (0-based)")
    j.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (the same overrides as the server's)")
    j.set_defaults(func=_join)
