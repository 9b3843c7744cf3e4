"""Config validation: the shipped configs pass, typos and bad references are one-line errors.

Also the test suite's own configuration: no test module imports another (shared code lives in tests/helpers/).
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import yaml

from medret.config import load_schema, validate_config
from medret.datasets import COMMON_OPTIONS, get_adapter, list_adapters
from medret.errors import MedretError

ROOT = Path(__file__).resolve().parents[2]
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
    config = validate_config(yaml.safe_load(path.read_text()))
    assert validate_config(config) == config, "a validated config validates again, unchanged"


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
        (
            lambda c: c.setdefault("evaluation", {}).update(findings={"levels": {"occlusion": 0.35}}),
            r"evaluation\.findings\.levels\.occlusion: 0\.35 is not one of the corruption's levels",
        ),
        (
            lambda c: c.setdefault("evaluation", {}).update(findings={"levels": {"occlusoin": 0.5}}),
            r"evaluation\.findings\.levels\.occlusoin: no corruption 'occlusoin'",
        ),
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


def _with_dataset(demo, entry):
    config = copy.deepcopy(demo)
    config["datasets"]["mine"] = entry
    return config


MIMIC = {"adapter": "mimic_cxr", "root": "/data/mimic", "reports": "/data/reports.zip"}
CSV = {"adapter": "csv", "csv": "/data/pairs.csv"}


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({**CSV, "study_list": "ids.txt"}, "study_list"),  # the audit's case: the restriction would be lost
        ({**CSV, "section": "findings"}, "section"),
        ({**CSV, "n_train": 10}, "n_train"),
        ({**MIMIC, "csv": "/data/pairs.csv"}, "csv"),
        ({**MIMIC, "labels": "/data/labels"}, "labels"),  # chexpert_plus only
        ({**MIMIC, "render_size": 64}, "render_size"),
        ({"adapter": "demo", "study_list": "ids.txt"}, "study_list"),
        ({"adapter": "demo", "root": "/data"}, "root"),
        ({"adapter": "iu_xray", "root": "/data", "reports": "r.csv"}, "reports"),
    ],
)
def test_adapter_refuses_other_adapters_options(demo, entry, key):
    with pytest.raises(MedretError) as err:
        validate_config(_with_dataset(demo, entry))
    message = str(err.value)
    assert message.startswith(f"config key datasets.mine.{key}: not an option of dataset adapter {entry['adapter']} (")
    assert "\n" not in message


def test_adapter_option_error_lists_the_options(demo):
    with pytest.raises(MedretError) as err:
        validate_config(_with_dataset(demo, {**CSV, "study_list": "ids.txt"}))
    assert str(err.value) == (
        "config key datasets.mine.study_list: not an option of dataset adapter csv (allowed keys: adapter, split, "
        "train_split, bad_images, image_size, fast_decode, views, extra_reports, relevance, uncertain_labels, csv); "
        "remove it"
    )


def test_adapters_take_their_own_options_and_only_their_defaults(demo):
    config = copy.deepcopy(demo)
    config["datasets"].update(
        mine={**CSV, "split": "valid", "bad_images": "skip"},
        mimic={**MIMIC, "section": "longest", "study_list": "ids.txt"},
        chexpert={"adapter": "chexpert_plus", "root": "/d", "reports": "r.csv", "split": "valid", "labels": "/l"},
        iu={"adapter": "iu_xray", "root": "/d", "section": "findings", "study_list": "uids.txt"},
    )
    out = validate_config(config)["datasets"]
    common = {
        "adapter",
        "split",
        "train_split",
        "bad_images",
        "views",
        "image_size",
        "fast_decode",
        "extra_reports",
        "relevance",
        "uncertain_labels",
    }
    assert set(out["mine"]) == common | {"csv"}, "the demo's n_train, n_test, render_size, seed are not filled in"
    assert set(out["mimic"]) == common | {"root", "reports", "section", "study_list"}
    # Each adapter's declared defaults, and only its own: section impression, image_format png.
    assert set(out["chexpert"]) == common | {"root", "reports", "labels", "section", "image_format"}
    assert out["chexpert"]["section"] == "impression" and out["chexpert"]["image_format"] == "png"
    assert set(out["iu"]) == common | {"root", "section", "study_list"}
    assert out["demo"]["n_train"] == 2000 and out["demo"]["render_size"] == 128  # demo keeps its defaults
    assert out["mine"]["split"] == "valid" and out["mine"]["train_split"] == "train"


def test_adapter_declarations_complete_the_schema():
    # config/schema.yaml holds the keys every adapter takes; each adapter declares its own, documented, and
    # validation closes a dataset entry with the declaration of its adapter.
    properties = load_schema()["properties"]["datasets"]["additionalProperties"]["properties"]
    assert set(properties) == {"adapter", *COMMON_OPTIONS}
    adapters = list_adapters()
    assert {"csv", "demo", "mimic_cxr", "chexpert_plus", "iu_xray"} <= set(adapters)
    for name, adapter in adapters.items():
        assert adapter is get_adapter(name) and adapter.description
        for key, option in adapter.options.items():
            assert key not in COMMON_OPTIONS and option.description and option.schema, (name, key)
    with pytest.raises(MedretError, match=r"datasets\.c: 'split' is a required property"):
        validate_config({"datasets": {"c": {"adapter": "chexpert_plus", "root": "/d", "reports": "r.csv"}}, **_REST})


_REST = {"models": {"m": {"family": "local", "checkpoint": "x"}}, "corruptions": {"o": {"kind": "occlusion"}}}


def test_no_test_module_imports_another():
    """What several test modules share lives in tests/helpers/ (``import helpers``): a test module importing
    another runs the other's module-level code and breaks when either one moves."""
    tests = ROOT / "tests"
    modules = sorted(tests.rglob("test_*.py"))
    assert len(modules) > 20 and all(m.parent != tests for m in modules), "test modules live in sub-folders"
    found = []
    for path in [*modules, tests / "conftest.py", *sorted((tests / "helpers").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):  # from test_x import ...; from models import test_x
                names = [node.module or "", *(alias.name for alias in node.names)]
            else:
                continue
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                for name in names
                if any(part.startswith("test_") for part in name.split("."))
            ]
    assert not found, "move what is shared into tests/helpers/:\n" + "\n".join(found)
