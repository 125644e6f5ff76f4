"""The Python API: fit on a card, predict images, explain, intervene, save and load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import cbm
from cbm.bottleneck import BottleneckConfig
from cbm.data import load_card
from cbm.demo import make_dataset
from cbm.encoders.testing import write_tiny_config
from cbm.heads import SparseConceptHead
from cbm.model import ConceptBottleneckModel


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    card = load_card(make_dataset(root / "demo", n=90, confounding=0.9, seed=2, size=64, progress=False))
    encoder = f"{write_tiny_config(root)}@random"
    model = cbm.fit(card, encoder=encoder, head=SparseConceptHead(n_lambdas=8), num_workers=0)
    return card, model


def _test_paths(card, k=4):
    part = card.manifest().split("test")
    return [card.image_root / r.path for r in part.rows[:k]]


def test_fit_predict_and_shapes(fitted):
    card, model = fitted
    assert model.classes == card.class_names
    paths = _test_paths(card)
    proba = model.predict_proba(paths)
    assert proba.shape == (len(paths), len(card.class_names))
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert model.predict(paths) == [model.classes[i] for i in proba.argmax(1)]
    assert model.predict(str(paths[0])) == model.predict(paths[:1])
    assert model.info["card"]["name"] == card.name
    assert model.info["path"]["lambda"], "the regularisation path is recorded"


def test_explanation_adds_up_to_the_logit(fitted):
    card, model = fitted
    path = _test_paths(card, 1)[0]
    feat = model.image_features(path)[0]
    exp = model.explain_features(feat)
    logits = model.decision_function_from_features(feat[None])[0]
    for k, cls in enumerate(model.classes):
        total = sum(c.contribution for c in exp.contributions[cls]) + exp.intercepts[cls]
        assert total == pytest.approx(float(logits[k]), abs=1e-4)
        assert all(c.weight != 0 for c in exp.contributions[cls])
        assert all(0 <= c.percentile <= 100 for c in exp.contributions[cls])
    assert exp.predicted == model.classes[int(np.argmax(logits))]
    assert exp.runner_up in model.classes and exp.runner_up != exp.predicted


def test_intervention_moves_the_prediction_the_way_the_weight_says(fitted):
    card, model = fitted
    k, j = np.unravel_index(np.argmax(np.abs(model.coef)), model.coef.shape)
    concept = model.bottleneck.concept_names[j]
    feat = model.image_features(_test_paths(card)[:1])[0]
    sign = np.sign(model.coef[k, j])
    o = int(np.argmin(model.coef[:, j] * sign))  # the class this concept speaks against most

    def log_odds(p: np.ndarray) -> float:  # of class k against class o; probabilities may saturate at 1
        return float(np.log(np.float64(p[k])) - np.log(np.float64(p[o])))

    high = log_odds(model.intervene_features(feat, {concept: 3.0}))
    low = log_odds(model.intervene_features(feat, {concept: -3.0}))
    assert (high - low) * sign > 0
    expected = 6.0 * (model.coef[k, j] - model.coef[o, j])  # linear in the concept score
    assert high - low == pytest.approx(expected, rel=1e-3)
    with pytest.raises(KeyError, match="unknown concept"):
        model.intervene_features(feat, {"no such concept": 1.0})
    with pytest.raises(TypeError, match="overrides must be a mapping"):
        model.intervene_features(feat, [(concept, 1.0)])


def test_a_head_whose_fit_returns_none_is_used_as_fitted(fitted):
    """A hand-written head whose fit returns None (not self) failed on a card with concept truth with
    'NoneType' object has no attribute 'coef_': the probabilities-or-scores choice kept fit's return value."""
    from cbm.heads import DenseConceptHead

    class NoneHead(DenseConceptHead):
        def fit(self, X, y, *, X_val=None, y_val=None):
            super().fit(X, y, X_val=X_val, y_val=y_val)

    card, model = fitted
    result = cbm.pipeline.fit_model(card, encoder=model.encoder, head=NoneHead(Cs=3), num_workers=0)
    assert result.model.coef.shape == (len(card.class_names), model.bottleneck.n_concepts)
    assert isinstance(result.head, NoneHead) and hasattr(result.head, "coef_")


def test_a_one_row_binary_head_explains_both_classes_and_a_head_without_weights_is_named(fitted):
    """A scikit-learn-style binary head's (1, C) row was put as [0, w]: the first class's logit held no
    concept, so its explanation listed none; it is the pair [-w/2, w/2] now, with the same probabilities.
    A head without coef_ failed with a bare AttributeError after the whole fit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from cbm.pipeline import full_coef

    class OneRow(LogisticRegression):
        def fit(self, X, y, *, X_val=None, y_val=None):
            return super().fit(X, y)

    class Neighbours(KNeighborsClassifier):
        def fit(self, X, y, *, X_val=None, y_val=None):
            return super().fit(X, y)

    card, model = fitted
    result = cbm.pipeline.fit_model(card, encoder=model.encoder, head=OneRow(C=0.1), num_workers=0)
    head, new = result.head, result.model
    np.testing.assert_allclose(new.coef, np.stack([-head.coef_[0] / 2, head.coef_[0] / 2]), rtol=1e-6)
    values = result.values["test"]
    np.testing.assert_allclose(new.predict_proba_from_features(result.splits["test"].features),
                               head.predict_proba(values), atol=1e-5)
    predicted = set()
    for path in _test_paths(card, k=len(result.splits["test"])):
        e = new.explain(path)
        predicted.add(e.predicted)
        assert e.top_concepts(k=3), f"no concept explains {e.predicted}"
    assert predicted == set(card.class_names), "both classes' explanations were looked at"
    with pytest.raises(TypeError, match="has no coef_ and intercept_ after fit: cbm's model is a linear head"):
        full_coef(Neighbours().fit(values, result.splits["test"].labels), 2)


def test_an_empty_batch_gives_empty_answers(fitted):
    """predict([]) and predict_proba([]) failed with numpy's 'cannot reshape array of size 0 into shape
    (0,newaxis)', though image_features returns a (0, D) array for them."""
    card, model = fitted
    n_classes, n_concepts = len(card.class_names), model.bottleneck.n_concepts
    assert model.predict([]) == []
    assert model.predict([], withhold=True) == []
    assert model.predict_proba([]).shape == (0, n_classes)
    assert model.concept_scores([]).shape == (0, n_concepts)
    assert model.predict_proba_from_features(model.image_features([])).shape == (0, n_classes)


def test_features_that_are_not_finite_or_a_batch_for_one_image_are_named(fitted):
    """NaN features gave the first class with every percentile at 100, as if confident; a batch given
    for one image was flattened into one row and blamed on the encoder."""
    card, model = fitted
    feats = model.image_features(_test_paths(card)[:3])
    broken = feats.copy()
    broken[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values \(row 1\)"):
        model.predict_proba_from_features(broken)
    with pytest.raises(ValueError, match=r"NaN or infinite values \(row 0\)"):
        model.explain_features(broken[1])
    with pytest.raises(ValueError, match=r"one image's feature vector \(D,\) was expected; got shape \(3, "):
        model.explain_features(feats)
    with pytest.raises(ValueError, match="one image's feature vector"):
        model.intervene_features(feats, {model.bottleneck.concept_names[0]: 1.0})
    assert model.explain_features(feats[:1]).predicted == model.explain_features(feats[0]).predicted
    with pytest.raises(ValueError, match="k=2.5: give how many concepts to list"):
        model.explain_features(feats[0]).top_concepts(k=2.5)


def test_weights_that_are_not_finite_and_a_batch_size_below_one_are_refused(fitted, tmp_path):
    """A NaN weight gave NaN probabilities, still labelled with the first class, and saved into a folder
    its own loader refused; batch_size=-1 returned no row for three images."""
    card, model = fitted
    coef = model.coef.copy()
    coef[0, 0] = np.nan
    with pytest.raises(ValueError, match="coef or intercept holds NaN or infinite values"):
        ConceptBottleneckModel(model.encoder_name, model.classes, model.bottleneck, coef, model.intercept)
    changed = ConceptBottleneckModel.load(model.save(tmp_path / "m"))
    changed.coef = coef  # changed after it was made
    with pytest.raises(ValueError, match="cannot save this model: the head's coef or intercept holds NaN"):
        changed.save(tmp_path / "nan")
    assert not (tmp_path / "nan" / "model.json").exists()
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"batch_size={size!r}: give a whole number of images per batch"):
            model.image_features(_test_paths(card)[:3], batch_size=size)
    # a model.json an editor saved with a byte-order mark loads
    text = (tmp_path / "m" / "model.json").read_text(encoding="utf-8")
    (tmp_path / "m" / "model.json").write_text("\ufeff" + text, encoding="utf-8")
    assert ConceptBottleneckModel.load(tmp_path / "m").classes == model.classes


def test_a_save_that_fails_leaves_the_model_already_there(fitted, tmp_path, monkeypatch):
    """info with a numpy number failed after the weights were written: the old model.json beside new
    weights, and the folder no longer loaded. Numpy numbers and NaN are now written (NaN as null);
    what is no JSON is refused before any file is written, and a full disk leaves every file."""
    import errno

    import cbm.utils

    _, model = fitted
    folder = model.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    saved_info = dict(model.info)
    try:
        model.info["auc"] = {1, 2}  # a set: no JSON
        with pytest.raises(ValueError, match="model.json would not be standard JSON"):
            model.save(folder)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
        calls = []

        def full_disk(fd):
            calls.append(fd)
            if len(calls) == 3:  # the third file of the save
                raise OSError(errno.ENOSPC, "No space left on device")

        model.info.update(auc=np.float32(0.9), spread=float("nan"), store_check=None)  # the check turned off
        with monkeypatch.context() as m:
            m.setattr(cbm.utils.os, "fsync", full_disk)
            with pytest.raises(OSError, match="No space left"):
                model.save(folder)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp file left either
        again = ConceptBottleneckModel.load(model.save(folder))
        assert again.info["auc"] == pytest.approx(0.9) and again.info["spread"] is None and again.info["store_check"] is None
    finally:
        model.info.clear()
        model.info.update(saved_info)
    assert ConceptBottleneckModel.load(folder).classes == model.classes


def test_save_load_round_trip(fitted, tmp_path):
    card, model = fitted
    folder = model.save(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors", "reference.safetensors"]
    again = ConceptBottleneckModel.load(folder)
    assert again.reference.threshold == pytest.approx(model.reference.threshold)  # the training reference, too
    paths = _test_paths(card)
    np.testing.assert_allclose(again.predict_proba(paths), model.predict_proba(paths), rtol=1e-5, atol=1e-6)
    assert again.bottleneck.concept_names == model.bottleneck.concept_names
    assert again.encoder.cache_key == model.encoder_key
    assert ConceptBottleneckModel.load(folder / "model.json").classes == model.classes  # its file stands for the folder
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(FileExistsError, match="a-file is a file: a model is saved into a folder"):
        model.save(tmp_path / "a-file")
    from cbm.data import PIXEL_PIPELINE_VERSION

    assert again.info["pixel_pipeline"] == PIXEL_PIPELINE_VERSION  # how its images were read, checked on load
    # the default concept directions are centred (the card's nuisance prompts only when asked for), after a reload too
    assert model.bottleneck.debiasing == {"centred": True, "nuisance_prompts": []}
    assert again.bottleneck.debiasing == model.bottleneck.debiasing
    np.testing.assert_allclose(again.bottleneck.directions, model.bottleneck.directions, atol=1e-6)
    # the run folder given for its model: the error says which folder to give
    (tmp_path / "m").rename(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match=f"looks like a run folder: give {tmp_path / 'model'}"):
        ConceptBottleneckModel.load(tmp_path)


def test_the_cards_nuisance_prompts_can_be_projected_out(fitted):
    card, model = fitted
    cleaned = cbm.fit(card, encoder=model.encoder_name, head=SparseConceptHead(n_lambdas=4), num_workers=0,
                      bottleneck=BottleneckConfig(nuisance_prompts=None))
    assert cleaned.bottleneck.debiasing == {"centred": True, "nuisance_prompts": ["ruler", "violet ink marks"]}
    assert not np.allclose(cleaned.bottleneck.directions, model.bottleneck.directions, atol=1e-4)


def test_the_model_records_manifest_rows_no_split_holds(fitted, tmp_path):
    """A row whose file is missing is left out of its split with a warning; the model keeps the count
    by kind (model.json info, shown on the model card), beside the unreadable images."""
    import shutil

    from cbm.explain import render_class_card_html

    card, model = fitted
    assert "manifest_rows_left_out" not in model.info
    copy = shutil.copytree(card.folder, tmp_path / "demo")
    first = next(r for r in load_card(copy).manifest() if r.split == "train")
    (load_card(copy).image_root / first.path).unlink()
    # and no test split (cbm.fit needs none): a problem of the whole file, which leaves out no row
    lines = (copy / "manifest.csv").read_text().splitlines(keepends=True)
    (copy / "manifest.csv").write_text("".join(t for t in lines if ",test," not in t and ",test_id," not in t))
    again = cbm.fit(load_card(copy), encoder=model.encoder, head=SparseConceptHead(n_lambdas=4), num_workers=0)
    assert again.info["manifest_rows_left_out"] == {"missing_file": 1}  # it was {"missing_file": 1, "empty_split": 1}
    assert "manifest_rows_left_out" in render_class_card_html(again)


def test_plain_cosines_can_be_chosen(fitted):
    card, model = fitted
    plain = cbm.fit(card, encoder=model.encoder_name, head=SparseConceptHead(n_lambdas=4), num_workers=0,
                    bottleneck=BottleneckConfig(centre=False, nuisance_prompts=[]))
    assert plain.bottleneck.debiasing == {"centred": False, "nuisance_prompts": []}
    np.testing.assert_allclose(plain.bottleneck.directions, plain.bottleneck.concept_embeddings, atol=1e-6)


def test_load_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        ConceptBottleneckModel.load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "something else"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a cbm model"):
        ConceptBottleneckModel.load(tmp_path)
    (tmp_path / "model.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        ConceptBottleneckModel.load(tmp_path)


def test_concepts_can_be_given_explicitly(fitted):
    card, model = fitted
    concepts = {"benign nevus": ["symmetric shape", "regular border"], "melanoma": ["irregular border", "blue-grey areas"]}
    m = cbm.fit(card, encoder=model.encoder, concepts=concepts, head=SparseConceptHead(n_lambdas=5))
    assert m.bottleneck.concept_names == ["symmetric shape", "regular border", "irregular border", "blue-grey areas"]
    # a short explicit list is centred on the card's whole concept store, not on its own mean
    store = model.bottleneck.concept_names
    assert m.info["bottleneck"]["centred_on"] == len(set(store) | set(m.bottleneck.concept_names)) > 4
    from cbm.encoders import encode_texts

    ref = encode_texts(model.encoder, list(dict.fromkeys([*m.bottleneck.concept_names, *store])), modality=card.modality).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(m.bottleneck.offset, ref.mean(0), atol=1e-5)


@pytest.fixture()
def small_card(tmp_path):
    """A 48-image demo card of this test's own, to break in different ways."""
    return load_card(make_dataset(tmp_path / "demo", n=48, confounding=0.9, seed=3, size=64, progress=False))


def test_a_missing_concept_store_is_reported_before_any_image_is_encoded(fitted, small_card, monkeypatch):
    import cbm.pipeline.fitting

    (small_card.folder / "concepts.json").unlink()

    def no_encoding(*args, **kwargs):
        raise AssertionError("images were encoded before the concepts were found")

    monkeypatch.setattr(cbm.pipeline.fitting, "extract_splits", no_encoding)
    with pytest.raises(FileNotFoundError, match="no concept list yet") as err:
        cbm.fit(small_card, encoder=fitted[1].encoder)
    # the card is not among the built-in ones, so the fix names it by its folder
    assert f"cbm concepts {small_card.folder} --llm PRESET" in str(err.value)
    assert "`cbm run 'concepts.list={class: [phrases]}'`" in str(err.value)  # the command line's way too


def test_an_empty_concept_list_names_the_card_as_a_command_line_finds_it(fitted, small_card, monkeypatch):
    import cbm.pipeline.fitting

    def no_encoding(*args, **kwargs):
        raise AssertionError("images were encoded before the concepts were checked")

    monkeypatch.setattr(cbm.pipeline.fitting, "extract_splits", no_encoding)
    with pytest.raises(ValueError, match=r"the concepts given \(\[\]\) hold no phrase: give at least one, or none"):
        cbm.fit(small_card, encoder=fitted[1].encoder, concepts=[])
    # an empty store names the card as a command line finds it (its folder; its name finds no card)
    monkeypatch.setattr(cbm.pipeline.fitting, "resolve_concepts",
                        lambda card, *a, **k: cbm.concepts.ConceptSet.from_mapping(card.class_names, {c: [] for c in card.class_names}))
    with pytest.raises(ValueError, match="give at least one") as err:
        cbm.fit(small_card, encoder=fitted[1].encoder)
    assert f"cbm concepts {small_card.folder} --llm PRESET" in str(err.value)


def test_a_missing_val_split_is_reported_before_any_image_is_encoded(fitted, small_card, monkeypatch):
    import cbm.pipeline.fitting

    text = (small_card.folder / "manifest.csv").read_text()
    (small_card.folder / "manifest.csv").write_text(text.replace(",val,", ",validation,"))

    def no_encoding(*args, **kwargs):
        raise AssertionError("images were encoded before the splits were checked")

    monkeypatch.setattr(cbm.pipeline.fitting, "extract_splits", no_encoding)
    with pytest.raises(ValueError, match=r"has no usable val rows.*unknown split name .*.validation."):
        cbm.fit(load_card(small_card.path), encoder=fitted[1].encoder)


def test_a_split_whose_rows_were_all_dropped_names_why(fitted, small_card):
    """Every path written the Windows way: the error names that, not "add train rows"."""
    lines = (small_card.folder / "manifest.csv").read_text().splitlines()
    header, rows = lines[0], [r.replace("/", "\\", 1) if ",train," in r or ",val," in r else r for r in lines[1:]]
    (small_card.folder / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(ValueError, match=r"no usable train, val rows.*left out for .*a Windows path.*write '/'.*cbm validate"):
        cbm.fit(load_card(small_card.path), encoder=fitted[1].encoder, num_workers=0)


def test_a_split_that_was_never_written_is_not_blamed_on_other_rows(fitted, small_card):
    lines = (small_card.folder / "manifest.csv").read_text().splitlines()
    rows = [r for r in lines[1:] if ",val," not in r and not r.endswith(",val")]
    bad = rows[0].replace("melanoma", "Melanoma").replace("benign nevus", "Benign nevus")
    (small_card.folder / "manifest.csv").write_text("\n".join([lines[0], *rows, bad]) + "\n")
    with pytest.raises(ValueError, match=r"has no val rows.*Add them"):
        cbm.fit(load_card(small_card.path), encoder=fitted[1].encoder, num_workers=0)


def test_a_head_without_a_validation_split_is_refused_before_any_work(fitted, small_card):
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(TypeError, match=r"LogisticRegression.fit takes no X_val, y_val.*fit\(X, y, \*, X_val, y_val\)"):
        cbm.fit(small_card, encoder=fitted[1].encoder, head=LogisticRegression())
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with pytest.raises(TypeError, match=r"Pipeline.fit takes no X_val, y_val"):  # fit(**params) routes them to steps
        cbm.fit(small_card, encoder=fitted[1].encoder, head=make_pipeline(StandardScaler(), LogisticRegression()))

    class Plain:  # fit takes the split, but nothing clones it or predicts with it: refused before encoding
        def fit(self, X, y, *, X_val, y_val):
            return self

    with pytest.raises(TypeError, match=r"head Plain has no get_params or predict: a head is a scikit-learn estimator"):
        cbm.fit(small_card, encoder=fitted[1].encoder, head=Plain())


def test_a_class_without_training_images_is_named(fitted, small_card):
    rows = (small_card.folder / "manifest.csv").read_text().splitlines()
    kept = [rows[0]] + [r for r in rows[1:] if not (",melanoma,train," in r)]
    (small_card.folder / "manifest.csv").write_text("\n".join(kept) + "\n")
    card = load_card(small_card.path)
    with pytest.raises(ValueError, match=r"no usable training images of class\(es\) \['melanoma'\]"):
        cbm.fit(card, encoder=fitted[1].encoder, num_workers=0)


def test_a_class_without_validation_images_is_named(fitted, small_card):
    """Val chooses the head: with one class alone there, every path point is 100 % right on val
    and the sparsest, which predicts that class for every image, would win in silence."""
    rows = (small_card.folder / "manifest.csv").read_text().splitlines()
    kept = [rows[0]] + [r for r in rows[1:] if not (",melanoma,val" in r)]
    (small_card.folder / "manifest.csv").write_text("\n".join(kept) + "\n")
    card = load_card(small_card.path)
    assert "note: no validation image of melanoma" in card.validate().summary()
    with pytest.raises(ValueError, match=r"no usable validation images of class\(es\) \['melanoma'\].*make-splits"):
        cbm.fit(card, encoder=fitted[1].encoder, num_workers=0)


def test_a_string_for_a_class_is_one_concept(fitted):
    card, model = fitted
    m = cbm.fit(card, encoder=model.encoder, concepts={"melanoma": "irregular border",
                                                                         "benign nevus": ["regular border"]},
                                   head=SparseConceptHead(n_lambdas=4))
    assert m.bottleneck.concept_names == ["regular border", "irregular border"]


def test_an_unreadable_training_image_is_named_in_the_log(fitted, small_card, caplog):
    part = small_card.manifest().split("train")
    broken = small_card.image_root / part.rows[0].path
    broken.write_bytes(b"not an image at all")
    with caplog.at_level("WARNING", logger="cbm.pipeline.inputs"):
        model = cbm.fit(load_card(small_card.path), encoder=fitted[1].encoder, num_workers=0,
                                           head=SparseConceptHead(n_lambdas=4))
    assert model.info["data"]["train"]["skipped"] == 1
    assert any("train split: 1 unreadable image(s) skipped" in r.message and str(part.rows[0].path) in r.message
               for r in caplog.records)


def test_saved_files_are_readable_as_the_umask_allows(fitted, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        folder = fitted[1].save(tmp_path / "m")
    finally:
        os.umask(old)
    for name in ("model.json", "model.safetensors"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("shape, message", [
    ((3, 40, 50), r"got \(3, 40, 50\): .*channels first.*arr\.transpose\(1, 2, 0\)"),
    ((40, 50, 5), r"got \(40, 50, 5\)"),
    ((0, 50, 3), r"got \(0, 50, 3\).*no pixels"),
])
def test_a_misshapen_image_array_is_named_with_its_shape(fitted, shape, message):
    """The encoder's transform pipeline would wrap this as "applying transform <object at 0x...>"."""
    _, model = fitted
    with pytest.raises(ValueError, match=message):
        model.predict(np.random.default_rng(0).random(shape))
    with pytest.raises(ValueError, match=message):  # explain reads an array as predict does
        model.explain(np.random.default_rng(0).random(shape))


def test_a_torch_tensor_is_read_channels_first_and_scaled_as_an_array(fitted):
    """torchvision gives images as (C, H, W): uint8 0-255 or floats in [0, 1]. Both read as the
    array does (a uint8 tensor used to be taken as 0-255 floats, silently), and explain takes what
    predict takes; an (H, W, C) tensor, or 0-255 floats, gets the fix."""
    import torch
    from PIL import Image

    card, model = fitted
    path = _test_paths(card)[0]
    arr = np.asarray(Image.open(path).convert("RGB"))
    expected = model.predict_proba(arr)[0]
    chw = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    for image in (chw, chw.float() / 255.0, chw[None]):
        assert model.predict_proba(image)[0] == pytest.approx(expected, abs=1e-5)
    assert list(model.explain(chw).probabilities.values()) == pytest.approx(list(expected), abs=1e-4)
    with pytest.raises(ValueError, match=r"got \(\d+, \d+, 3\), which looks \(H, W, C\): give t.permute\(2, 0, 1\)"):
        model.predict(torch.from_numpy(arr.copy()))
    with pytest.raises(ValueError, match=r"t.permute\(2, 0, 1\)"):
        model.explain(torch.from_numpy(arr.copy()))
    with pytest.raises(ValueError, match="must hold values in \\[0, 1\\].*divide by 255"):
        model.predict(chw.float())
    # normalised with ImageNet's mean and std (as torchvision pipelines do): dividing by 255 cannot mend it
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with pytest.raises(ValueError, match="looks normalised with a mean and std: pass the pixels before") as caught:
        model.predict((chw.float() / 255.0 - mean) / std)
    assert "255" not in str(caught.value)
    with pytest.raises(ValueError, match=r"from -1024 to 3000 \(rescale or window it to \[0, 1\]"):  # CT numbers
        model.predict(torch.linspace(-1024, 3000, 3 * 64 * 64).reshape(3, 64, 64))
    with pytest.raises(ValueError, match=r"tensor of torch.int64 has no known range.*t.to\(torch.uint8\)"):
        model.predict(chw.long())
    with pytest.raises(ValueError, match=r"image tensor must be \(C, H, W\) with C in 1..4.*got \(5, 8, 9\)$"):
        model.explain(torch.zeros(5, 8, 9))


def test_predict_and_explain_take_the_same_images(fitted):
    """A PIL image alone, an RGBA array (alpha left out) and a list given to explain."""
    from PIL import Image

    card, model = fitted
    path = _test_paths(card)[0]
    rgb = Image.open(path).convert("RGB")
    rgba = np.dstack([np.asarray(rgb), np.full(np.asarray(rgb).shape[:2], 255, np.uint8)])
    assert model.predict(rgb) == model.predict([rgb]) == model.predict(path)
    expected = model.explain(path).probabilities
    for image in (rgb, rgba, rgb.convert("RGBA")):
        assert model.explain(image).probabilities == pytest.approx(expected, abs=1e-4)
    # every PIL mode is read as a file of that mode is, by predict and explain alike: 16-bit and float
    # grey not through an 8-bit conversion, a palette image by its colours, not its indices
    grey = np.asarray(rgb.convert("L"), np.float32) / 255.0
    for image in (Image.fromarray((grey * 4095).astype(np.uint16)), Image.fromarray(grey), rgb.convert("P"),
                  rgb.convert("CMYK"), Image.fromarray((grey * 70000).astype(np.int32))):
        expected = model.predict_proba(image)[0]
        assert list(model.explain(image).probabilities.values()) == pytest.approx(list(expected), abs=1e-4), image.mode
    palette = model.predict_proba(rgb.convert("P"))[0]
    assert palette == pytest.approx(model.predict_proba(rgb.convert("P").convert("RGB"))[0], abs=1e-4)
    import torch

    batch = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # channels first, as the transform takes
    assert len(model.predict(batch)) == 2 and model.predict(batch) == model.predict(list(batch))
    with pytest.raises(TypeError, match="one image is explained at a time, not a list of 2"):
        model.explain([path, path])
    pred = model.explain(path)
    with pytest.raises(KeyError, match=r"no class 'Melanoma'; the classes are"):
        pred.top_concepts("Melanoma")
    with pytest.raises(ValueError, match="k=-1"):
        pred.top_concepts(k=-1)
    from_home = "~/" + os.path.relpath(Path(path).resolve(), Path.home().resolve())  # "~" expanded as a shell would
    assert model.explain(from_home).probabilities == pytest.approx(pred.probabilities, abs=1e-6)
    for bad, name in ((Path(path).read_bytes(), "bytes .file contents"), (None, "NoneType"), ({"a": 1}, "dict")):
        with pytest.raises(TypeError, match=f"an image is a file path.*got {name}"):
            model.predict(bad)
        with pytest.raises(TypeError, match=f"an image is a file path.*got {name}"):
            model.explain(bad)
