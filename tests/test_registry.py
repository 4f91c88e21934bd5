"""The protocol registry: a protocol declared here, in the test, runs from a TOML config to a
results folder without touching any project file; the built-in protocols are all found."""
import csv
import json
from dataclasses import dataclass

import numpy as np
import pytest

from crowdlearn import registry
from crowdlearn.config import ConfigError, from_dict, load, reference_markdown
from crowdlearn.schema import from_section, param, validate
from sim import wire
from sim.machine import Halt, Machine, Received, Report, Send, Start


@wire.message(0x7E01)
@dataclass(frozen=True)
class Ask:
    round: int


@wire.message(0x7E02)
@dataclass(frozen=True)
class Answer:
    round: int
    samples: int
    payload: np.ndarray


class AskServer(Machine):
    """Each round: ask every device, wait for every answer, report the (unchanged) model."""

    def __init__(self, node_id, devices, weights, rounds):
        super().__init__(node_id)
        self.devices, self.weights, self.rounds = list(devices), weights, rounds
        self.round, self.answers = 0, set()

    def _ask(self):
        return [Send(d, Ask(self.round)) for d in self.devices]

    def handle(self, event, now):
        if isinstance(event, Start):
            return self._ask()
        if isinstance(event, Received) and isinstance(event.message, Answer) \
                and event.message.round == self.round:
            self.answers.add(event.src)
            if len(self.answers) < len(self.devices):
                return []
            info = {"round": self.round, "selected": list(self.devices),
                    "aggregated": sorted(self.answers)}
            out = [Report("round", info),
                   Report("global_model", tuple(self.weights), (("round", self.round),))]
            self.round, self.answers = self.round + 1, set()
            return out + ([Halt()] if self.round == self.rounds else self._ask())
        return []


class AskDevice(Machine):
    def __init__(self, node_id, samples, width):
        super().__init__(node_id)
        self.samples, self.width = samples, width

    def handle(self, event, now):
        if isinstance(event, Received) and isinstance(event.message, Ask):
            return [Send(event.src, Answer(event.message.round, self.samples,
                                           np.zeros(self.width, np.float32)))]
        return []


@dataclass(frozen=True)
class AskParams:
    """The [askround] section, declared once: keys, defaults, docs, limits and a relation."""

    payload_floats: int = param(10, "Floats each answer carries.", min=1)
    max_floats: int = param(1000, "Most floats an answer may carry.", min=1)

    def __post_init__(self):
        validate(self)

    @staticmethod
    def relations(v, key):
        return [f"{key('payload_floats')}: must be <= {key('max_floats')}"] \
            if v["payload_floats"] > v["max_floats"] else []


def build(ctx):
    width = from_section(AskParams, ctx.config.askround).payload_floats
    machines = {"server": AskServer("server", ctx.devices, ctx.init_weights, ctx.config.rounds)}
    for d in ctx.devices:
        machines[d] = AskDevice(d, len(ctx.parts[d]), width)
    return machines


def check(v):
    return ["askround: needs at least 2 devices"] if v["fleet"]["devices"] < 2 else []


@pytest.fixture
def askround():
    p = registry.register(registry.Protocol(
        "askround", build, doc="Test protocol: ask, answer, report.",
        params={"askround": AskParams}, check=check,
        summary=lambda sim: {"askround_answers": sim.monitor.messages_by_kind["Answer"]}))
    yield p
    registry.unregister("askround")


def test_every_builtin_protocol_is_registered():
    assert set(registry.names()) >= {"fedavg", "centralized", "standalone", "crowdlearning",
                                     "ssgd", "dssgd", "fm"}
    with pytest.raises(KeyError, match="did you mean 'dssgd'"):
        registry.get("dsgd")


def test_a_protocol_registered_by_a_test_runs_from_a_toml_file_to_results(askround, tmp_path):
    from crowdlearn.cli import main
    toml = tmp_path / "ask.toml"
    toml.write_text('protocol = "askround"\nrounds = 3\n[fleet]\ndevices = 4\ncells = 1\n'
                    '[training]\nbackend = "none"\n[askround]\npayload_floats = 25\n')
    assert load(toml).askround.payload_floats == 25
    out = tmp_path / "out"
    assert main(["run", str(toml), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "askround" and summary["askround_answers"] == 12
    # the bytes are the encoded messages: 4 asks and 4 answers (25 floats each) per round
    ask = len(wire.encode(Ask(0)))
    answer = len(wire.encode(Answer(0, 1, np.zeros(25, np.float32))))
    assert summary["bytes_total"] == 3 * 4 * (ask + answer)
    assert summary["bytes_by_kind"] == {"Answer": 12 * answer, "Ask": 12 * ask}


def test_the_registered_section_is_validated_documented_and_removed_with_the_protocol(askround):
    with pytest.raises(ConfigError) as err:
        from_dict({"protocol": "askround", "fleet": {"devices": 1},
                   "askround": {"payload_floats": 0, "payload": 3}})
    assert err.value.problems == [
        "askround.payload: unknown key; did you mean 'payload_floats'? (valid: max_floats, "
        "payload_floats)",
        "askround.payload_floats: must be >= 1; got 0",
        "askround: needs at least 2 devices"]
    assert "| `askround.payload_floats` | `10` | Floats each answer carries. |" \
        in reference_markdown()
    registry.unregister("askround")
    with pytest.raises(ConfigError, match="protocol: must be one of"):
        from_dict({"protocol": "askround"})
    assert "askround" not in reference_markdown()
    registry.register(askround)       # the fixture unregisters it again


def test_a_second_declaration_of_a_name_or_a_section_is_refused(askround):
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.Protocol("askround", build))
    with pytest.raises(ValueError, match=r"declares config section \[fedavg\]"):
        registry.register(registry.Protocol("other", build, params={"fedavg": AskParams}))
    assert "other" not in registry.names()


def test_a_registered_protocols_params_dataclass_is_its_section_and_its_validation(askround):
    assert "| `askround.payload_floats` | `10` | Floats each answer carries. |" \
        in reference_markdown()
    with pytest.raises(ConfigError) as info:
        from_dict({"protocol": "askround", "fleet": {"devices": 4},
                   "askround": {"payload_floats": 0}})
    assert info.value.problems == ["askround.payload_floats: must be >= 1; got 0"]
    with pytest.raises(ConfigError) as info:
        from_dict({"protocol": "askround", "fleet": {"devices": 4},
                   "askround": {"payload_floats": 20, "max_floats": 10}})
    assert info.value.problems == ["askround.payload_floats: must be <= askround.max_floats"]
    with pytest.raises(ValueError, match="payload_floats: must be <= max_floats"):
        AskParams(payload_floats=20, max_floats=10)

