"""A confounded card's groups checked against its manifest: a group no row holds, maps that are
swapped, and a world without an association (which is not reported)."""

from __future__ import annotations

import csv

import pytest
import yaml
from test_data_card import CARD

from cbm.data import ManifestError, load_card
from cbm.data._confounder import MARGIN

ID = {"nevus": "vienna", "melanoma": "barcelona"}
OOD = {"nevus": "barcelona", "melanoma": "vienna"}


def card_with(tmp_path, shares: dict[str, float], *, id_groups=ID, ood_groups=OOD, column="hospital",
              group_column=None, n: int = 20):
    """A confounded card whose manifest gives ``shares[split]`` of each class's images its in-domain
    group (``test``: its out-of-domain group); the other images carry the other group."""
    folder = tmp_path / "card"
    folder.mkdir(parents=True)
    card = {**CARD, "confounder": {"column": column, "description": "the hospital", "id_groups": id_groups,
                                   "ood_groups": ood_groups}}
    if group_column:
        card["group_column"] = group_column
    (folder / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "hospital", "site"])
        for split, share in shares.items():
            for label in ("nevus", "melanoma"):
                home, away = (OOD[label], ID[label]) if split == "test" else (ID[label], OOD[label])
                for i in range(n):
                    group = home if i < round(share * n) else away
                    writer.writerow([f"{split}/{label}_{i}.png", label, split, group, "back"])
    return load_card(folder)


def kinds(card) -> list[str]:
    return [p.kind for p in card.validate(check_files=False).problems]


SHARES = {"train": 0.95, "val": 0.95, "test_id": 0.95, "test": 0.95}


def test_a_manifest_that_follows_its_card_has_no_problem(tmp_path):
    card = card_with(tmp_path, SHARES)
    assert kinds(card) == []
    assert len(card.manifest(strict=True, check_files=False)) == 160


def test_a_world_without_an_association_is_not_reported(tmp_path):
    """Half and half (the demo's cue-free twin): the card's maps describe no association, but the rule
    asks the other group to outnumber the card's by more than MARGIN of the class's images and by
    more than 2 sqrt(n), so one image more either way is never reported, in a large split or a small one."""
    for n in (21, 9, 3):  # 11 of 21, 5 of 9, 2 of 3 from the other group
        card = card_with(tmp_path / str(n), {s: 0.5 for s in SHARES}, n=n)
        assert kinds(card) == [], n
    assert MARGIN == 0.10


def test_a_group_spelt_otherwise_is_named_with_the_values_the_column_holds(tmp_path):
    card = card_with(tmp_path, SHARES, id_groups={"nevus": "Vienna", "melanoma": "barcelona"})
    problems = card.validate(check_files=False).problems
    assert [p.kind for p in problems] == ["confounder_group"]
    message = problems[0].message
    assert "'Vienna'" in message and "'hospital'" in message and "'vienna'" in message and "'barcelona'" in message
    assert "confounder.id_groups and ood_groups" in message
    with pytest.raises(ManifestError, match="confounder names the group"):
        card.manifest(strict=True, check_files=False)
    card.manifest(check_files=False)  # a run goes on, with a warning


def test_swapped_maps_are_reported_per_class_and_split(tmp_path):
    card = card_with(tmp_path, SHARES, id_groups=OOD, ood_groups=ID)
    problems = card.validate(check_files=False).problems
    assert {p.kind for p in problems} == {"confounder_association"}
    assert len(problems) == 8  # two classes in four splits
    nevus_train = next(p.message for p in problems if "'nevus' in split 'train'" in p.message)
    assert "19 of its 20 images come from 'vienna' and 1 from 'barcelona'" in nevus_train
    assert "confounder.id_groups (in domain)" in nevus_train
    assert any("confounder.ood_groups (out of domain)" in p.message for p in problems)


def test_one_split_drawn_against_the_card_is_reported_alone(tmp_path):
    card = card_with(tmp_path, {**SHARES, "test": 0.2})  # out of domain, most images keep the in-domain group
    problems = card.validate(check_files=False).problems
    assert [p.message.split(":")[0] for p in problems] == ["class 'melanoma' in split 'test'", "class 'nevus' in split 'test'"]
    assert kinds(card_with(tmp_path / "b", {**SHARES, "test": 0.3})) == []  # 14 against 6 of 20: within 2 sqrt(20)


def test_a_confounder_column_apart_from_the_group_column(tmp_path):
    """The groups of worst-group accuracy may be another column: the confounder's is read from the row."""
    card = card_with(tmp_path, SHARES, group_column="site")
    assert kinds(card) == [] and {r.group for r in card.manifest(check_files=False)} == {"back"}
    swapped = card_with(tmp_path / "b", SHARES, group_column="site", id_groups=OOD, ood_groups=ID)
    assert set(kinds(swapped)) == {"confounder_association"}
    absent = card_with(tmp_path / "c", SHARES, group_column="site", column="clinic")
    problems = absent.validate(check_files=False).problems
    assert [p.kind for p in problems] == ["confounder_group"] and "no column 'clinic'" in problems[0].message


def test_demo_worlds_follow_their_card_at_every_strength(tmp_path):
    """Small worlds (a few images of a class in val and test_id) at and around half and half, and a
    world whose mark goes with the nevi (p < 0.5: its card says so)."""
    from cbm.demo import make_dataset

    for p, classes, n in ((0.8, 3, 120), (0.5, 3, 90), (0.5, 2, 90), (0.55, 3, 60), (0.2, 2, 60)):
        card = load_card(make_dataset(tmp_path / f"{p}-{classes}-{n}", n=n, confounding=p, classes=classes, seed=3,
                                      size=32, workers=1, progress=False))
        assert [q.message for q in card.validate(check_files=False).problems if q.kind.startswith("confounder")] == [], p
    assert card.confounder.id_groups == {"benign nevus": "marked", "melanoma": "unmarked"}
