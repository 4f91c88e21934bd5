"""``crowdlearn serve`` and ``crowdlearn join``: the server and the devices of one run as separate
OS processes over TCP (the asyncio runtime, :mod:`crowdlearn.realtime`).

Examples
--------
::

    # each device: its own key file (created 0600 if absent), enrolled in the server's roster
    crowdlearn join examples/default.toml --key dev0.key --enrol roster.txt --device 0
    crowdlearn serve examples/default.toml --listen 127.0.0.1:7070 --roster roster.txt
    crowdlearn join examples/default.toml --connect 127.0.0.1:7070 --device 0 --key dev0.key

``--testbed-keys`` (on ``serve`` and every ``join``) derives every node's key from the config's
seed instead: anyone holding the config can then impersonate any device, which is what a testbed
on one machine is, and nothing more.

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
    from crowdlearn.training.tfimport import import_tensorflow
    if cfg.training.backend != "none" or registry.get(cfg.protocol).needs_tensorflow:
        import_tensorflow(quiet=True)


def _keys_or_testbed(cmd: str, value, option: str, what: str, testbed: bool) -> None:
    """Exactly one of ``option`` (real keys) and ``--testbed-keys``, or a :class:`UserError`."""
    if value is not None and testbed:
        raise CrowdlearnError(f"{cmd} takes {option} or --testbed-keys, not both")
    if value is None and not testbed:
        raise CrowdlearnError(f"{cmd} needs {option} ({what}) or --testbed-keys (keys derived "
                              "from the config's seed: a testbed only)")


def _serve(args: argparse.Namespace) -> int:
    from crowdlearn.cli import _write
    from crowdlearn.results import check_out
    from sim.aio.keys import KeyFileError, read_roster

    host, port = parse_address(args.listen)
    _keys_or_testbed("serve", args.roster, "--roster FILE", "the devices' public keys, "
                     "written by crowdlearn join --key KEY --enrol FILE", args.testbed_keys)
    roster = None
    if args.roster is not None:
        try:
            roster = read_roster(args.roster)
        except KeyFileError as exc:
            raise CrowdlearnError(str(exc)) from None
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

    from crowdlearn.realtime import roster_keys
    if roster is not None:      # every device enrolled: checked before anything listens
        roster_keys(roster, [n for n in sim.driver.machines if isinstance(n, int)])
    results = serve(sim, host=host, port=port, on_listening=listening, on_started=started,
                    roster=roster)
    folder = _write(results, out, args)
    s = results.summary
    print(f"{s['protocol']}: {s['rounds_completed']} rounds, final accuracy "
          f"{s.get('final_accuracy')}, {s['bytes_total']} bytes, real {s['real_time_s']:.1f} s",
          flush=True)
    print(f"results: {folder}", flush=True)
    return 0 if s["rounds_completed"] else 3


def _join(args: argparse.Namespace) -> int:
    from sim.aio.keys import KeyFileError, enrol, load_or_create_key

    _keys_or_testbed("join", args.key, "--key PATH", "the device's own key file, created if "
                     "absent", args.testbed_keys)
    if args.enrol is not None and args.key is None:
        raise CrowdlearnError("--enrol ROSTER needs --key PATH (the key to enrol)")
    if args.enrol is None and args.connect is None:
        raise CrowdlearnError("join needs --connect HOST:PORT (or --enrol ROSTER to enrol the "
                              "device's key and exit)")
    host, port = parse_address(args.connect) if args.connect else (None, None)
    cfg = _config(args)
    if not 0 <= args.device < cfg.fleet.devices:
        raise CrowdlearnError(f"--device {args.device}: this run has devices 0.."
                              f"{cfg.fleet.devices - 1}")
    key = None
    if args.key is not None:
        try:
            key = load_or_create_key(args.key)
            if args.enrol is not None:
                enrol(args.enrol, args.device, key)
        except KeyFileError as exc:
            raise CrowdlearnError(str(exc)) from None
        if args.enrol is not None:
            print(f"device {args.device} enrolled in {args.enrol}", flush=True)
            return 0
    _tensorflow(cfg)
    from crowdlearn.realtime import join
    try:
        out = join(cfg, host=host, port=port, device=args.device, key=key)
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
    s.add_argument("--roster", metavar="FILE", help="accepted devices' public keys, one "
                   "'DEVICE HEX' line each (written by join --enrol)")
    s.add_argument("--testbed-keys", action="store_true", help="derive every key from the "
                   "config's seed instead (a testbed: whoever has the config can impersonate "
                   "any device)")
    s.set_defaults(func=_serve)
    j = sub.add_parser("join", parents=parents, help="run one device of a served run",
                       description=__doc__.split("\n\n")[0])
    j.add_argument("config", nargs="?", help="the server's TOML config file")
    j.add_argument("--connect", metavar="HOST:PORT", help="the server's address")
    j.add_argument("--device", required=True, type=int, metavar="I", help="device id (0-based)")
    j.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (the same overrides as the server's)")
    j.add_argument("--key", metavar="PATH", help="the device's X25519 key file (PEM; created "
                   "with mode 0600 if absent, never overwritten)")
    j.add_argument("--enrol", metavar="ROSTER", help="add the device's public key to the "
                   "server's roster file and exit")
    j.add_argument("--testbed-keys", action="store_true", help="derive the key from the "
                   "config's seed instead (a testbed only)")
    j.set_defaults(func=_join)
