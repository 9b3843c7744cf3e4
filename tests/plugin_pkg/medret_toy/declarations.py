"""The plug-in's declarations: cheap to import (no torch), as medret reads them on every config check.

The code that runs is named as "module:attribute" and imported only when a model is built, a dataset
read or a corruption applied.
"""

from medret.corruptions import CorruptionKind
from medret.datasets import DatasetAdapter
from medret.models import Family, ResizeRule
from medret.plugins import Option

FAMILY = Family(
    name="toy",
    build="medret_toy.model:ToyAdapter",
    description="a toy dual encoder: grid means of the image, hashed words of the report",
    options={
        "grid": Option("cells per side of the image features", {"type": "integer", "minimum": 1}, default=4),
        "scale": Option("factor of the text features", {"type": "number", "exclusiveMinimum": 0}, default=1.0),
    },
    resize=ResizeRule("squash", (8, 8)),
)

ADAPTER = DatasetAdapter(
    name="toy_pairs",
    source_files="medret_toy.data:sources",
    load="medret_toy.data:load",
    description="a medret pairs CSV named by `pairs` (the csv adapter's format)",
    options={"pairs": Option("path of the pairs CSV", {"type": "string"}, required=True, path="file")},
)

CORRUPTION = CorruptionKind(
    name="invert",
    specs="medret.corruptions:severity_specs",  # medret's own spec table for severities 0..5
    transform="medret_toy.invert:apply",
    param_columns=("strength",),
    severity=True,
    parameters=(0.2, 0.4, 0.6, 0.8, 1.0),
    description="grey levels inverted and blended with the image, strength = severity / 5",
)
