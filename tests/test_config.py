"""Config validation: the shipped configs pass, typos and bad references are one-line errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medret.config import load_schema, validate_config
from medret.errors import MedretError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    ROOT / "config" / "config.yaml",
    *sorted((ROOT / "config" / "examples").glob("*.yaml")),
    *sorted((ROOT / "tests" / "configs").glob("*.yaml")),
]


@pytest.fixture
def demo():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    validate_config(yaml.safe_load(path.read_text()))


def test_defaults_are_filled(demo):
    out = validate_config(demo)
    assert out["models"]["local"]["device"] == "auto"
    assert out["models"]["local"]["train"]["lr"] == 0.002
    assert out["datasets"]["demo"]["split"] == "test"
    assert out["corruptions"]["occlusion"]["fill"] == "black"
    assert out["evaluation"]["ci"] == 0.95
    assert "device" not in demo["models"]["local"], "the input config is not modified"


def _reversed_keys(value):
    """``value`` with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    return value


def test_key_order_does_not_change_the_entries(demo):
    # Snakemake compares params as strings: the order keys are written in must not show in them.
    shuffled = _reversed_keys(demo)
    shuffled["corruptions"]["occlusion"]["repeats"] = 1  # a default written out in another place
    a, b = validate_config(demo), validate_config(shuffled)
    assert list(b["models"]) == list(reversed(list(demo["models"]))), "named entries keep the user's order"
    assert list(b["models"]["local-occaug"]["train"]) == sorted(b["models"]["local-occaug"]["train"])
    for section in ("datasets", "models", "corruptions"):
        for name in a[section]:
            assert str(a[section][name]) == str(b[section][name]), (section, name)
    assert str(a["evaluation"]) == str(b["evaluation"])
    assert a["corruptions"]["occlusion"]["levels"] == demo["corruptions"]["occlusion"]["levels"], "lists keep order"


def test_every_schema_key_is_documented():
    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{'.'.join([*path, key])} has no description"
            walk(sub, [*path, key])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, [*path, "<name>"])

    walk(load_schema(), [])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(modles={}), r"config key modles: unknown key \(did you mean 'models'\?\)"),
        (
            lambda c: c["models"]["local"]["train"].update(epocs=3),
            r"models\.local\.train\.epocs: unknown key",
        ),
        (
            lambda c: c["models"]["local"].update(family="clip9"),
            r"models\.local\.family: unknown family 'clip9'",
        ),
        (
            lambda c: c["datasets"]["demo"].update(adapter="mimic9"),
            r"datasets\.demo\.adapter: unknown dataset",
        ),
        (lambda c: c["models"]["local"]["train"].update(dataset="nope"), r"train\.dataset: 'nope' is not in"),
        (
            lambda c: c["corruptions"]["occlusion"].update(levels=[0.5, 2]),
            r"corruptions\.occlusion\.levels\.1",
        ),
        (lambda c: c["corruptions"]["occlusion"].update(kind="smudge"), r"corruptions\.occlusion\.kind"),
        (lambda c: c["datasets"].update(mine={"adapter": "csv"}), r"datasets\.mine.*'csv' is a required"),
        (lambda c: c["models"].update({"bad name": {"family": "local"}}), r"name 'bad name' must be"),
        (lambda c: c["models"].update(x={"family": "local"}), r"models\.x: family local needs either"),
    ],
)
def test_bad_configs(demo, edit, message):
    config = copy.deepcopy(demo)
    edit(config)
    with pytest.raises(MedretError, match=message) as err:
        validate_config(config)
    assert "\n" not in str(err.value)
