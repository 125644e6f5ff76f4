"""The demo world: synthetic dermoscopy with exact concept ground truth, a confounder, and ``demo-clip``.

No real medical images or pretrained vision-language weights can be had offline, so cbm ships a
world in which the truth is known. Lesions have five core attributes (asymmetry, border, colours,
dermoscopic structures, diameter), their diagnosis follows Stolz's ABCD rule of dermoscopy, and a
spurious cue (a ruler or violet ink marks plus a clinic colour cast) can be tied to the malignant
class in train/val and reversed in test. ``demo-clip`` is a small CLIP pretrained on captioned
images of the same world (``cbm/demo/assets/``).

    from cbm.demo import make_dataset, DEMO_CONCEPTS
    card_path = make_dataset("demo-data", n=6000, confounding=0.95)   # PNGs + manifest.csv + card.yaml

Modules: ``world`` (attributes, the rule, concepts), ``render`` (drawing), ``dataset`` (confounded
datasets and cards), ``corpus`` (captions for pretraining), ``encoder`` (loading ``demo-clip``).
"""

from __future__ import annotations

from cbm.demo.dataset import SPLITS, DemoItem, cached_dataset, card_name, make_dataset, plan_dataset
from cbm.demo.render import render_scene
from cbm.demo.rule import abcd_rule_agreement, abcd_rule_metric
from cbm.demo.world import (
    ABCD_CONCEPTS,
    CLASS_NAMES,
    COLOURS,
    CORE_CONCEPTS,
    DEMO_CONCEPTS,
    RULE_WEIGHTS,
    STRUCTURES,
    Concept,
    Lesion,
    Scene,
    abcd_label,
    concept_by_phrase,
    concept_truth,
    demo_concepts,
    lesion_attributes,
    sample_lesion,
    tds_tenths,
    total_dermoscopy_score,
)

__all__ = [
    "ABCD_CONCEPTS",
    "CLASS_NAMES",
    "COLOURS",
    "CORE_CONCEPTS",
    "DEMO_CONCEPTS",
    "RULE_WEIGHTS",
    "SPLITS",
    "STRUCTURES",
    "Concept",
    "DemoItem",
    "Lesion",
    "Scene",
    "abcd_label",
    "abcd_rule_agreement",
    "abcd_rule_metric",
    "cached_dataset",
    "card_name",
    "concept_by_phrase",
    "concept_truth",
    "demo_concepts",
    "lesion_attributes",
    "make_dataset",
    "plan_dataset",
    "render_scene",
    "sample_lesion",
    "tds_tenths",
    "total_dermoscopy_score",
]
