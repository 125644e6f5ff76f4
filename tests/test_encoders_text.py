"""cbm.encoders.text: prompt ensembling over templates, modality defaults, template checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cbm.encoders import create_encoder, default_templates, encode_texts
from cbm.encoders.testing import write_tiny_config


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return create_encoder(f"{write_tiny_config(tmp_path_factory.mktemp('tiny-text'))}@random")


def test_ensemble_is_the_renormalised_mean_of_the_template_embeddings(enc):
    templates = ["a photo of {}", "an image showing {}", "{}"]
    texts = ["irregular border", "blue-white veil"]
    out = encode_texts(enc, texts, templates)
    for i, text in enumerate(texts):
        each = enc.encode_text([t.format(text) for t in templates])
        assert torch.allclose(out[i], F.normalize(each.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-6)


def test_single_plain_template_is_the_text_itself(enc):
    assert torch.allclose(encode_texts(enc, ["dots"], ["{}"]), enc.encode_text(["dots"]), atol=1e-6)


def test_modality_picks_the_default_templates(enc):
    assert default_templates("dermoscopy")[0] == "a dermoscopy photo showing {}"
    assert default_templates("Chest X-ray") == default_templates("cxr") == default_templates("chest x-ray")
    assert default_templates("thermal imaging")[0] == "a thermal imaging image showing {}"
    by_modality = encode_texts(enc, ["dots"], modality="dermoscopy")
    explicit = encode_texts(enc, ["dots"], list(default_templates("dermoscopy")))
    assert torch.equal(by_modality, explicit)
    assert not torch.allclose(by_modality, encode_texts(enc, ["dots"], modality="chest x-ray"))


def test_bad_templates_and_texts_are_refused(enc):
    with pytest.raises(ValueError, match="exactly one '\\{\\}'"):
        encode_texts(enc, ["dots"], ["a photo of", "{} and {}"])
    with pytest.raises(ValueError, match="no prompt templates"):
        encode_texts(enc, ["dots"], [])
    with pytest.raises(ValueError, match="non-empty strings"):
        encode_texts(enc, ["dots", "  "])
    with pytest.raises(TypeError, match="list of strings"):
        encode_texts(enc, "dots")
    assert encode_texts(enc, []).shape == (0, enc.embed_dim)


def test_a_text_cut_at_the_text_towers_length_is_named(enc, caplog):
    """The tokenizer cuts silently: two long concepts that differ only at the end would embed alike."""
    long = "lesion with " + " ".join(["irregular"] * 120)
    with caplog.at_level("WARNING", logger="cbm.encoders.encoder"):
        enc.encode_text([long + " border", "dots"])
    assert "1 text(s) fill the text tower's" in caplog.text and "lesion with irregular" in caplog.text
    caplog.clear()
    enc.encode_text(["dots", "regular border"])
    assert "fill the text tower" not in caplog.text


def test_a_tokenizer_that_pads_with_another_id_is_not_said_to_cut_every_text(tmp_path, caplog):
    # RoBERTa-style tokenizers pad with 1: every short text was reported as cut at the tower's length
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from cbm.encoders.testing import TINY_CONFIG

    words = "<s> <pad> </s> <unk> irregular border blue white veil".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(str(tmp_path / "tokenizer"))  # fmt: skip
    text_cfg = {**TINY_CONFIG["text_cfg"], "hf_tokenizer_name": str(tmp_path / "tokenizer"), "vocab_size": 16,
                "context_length": 12, "pad_id": 1}  # fmt: skip
    roberta_like = create_encoder(f"{write_tiny_config(tmp_path, config={**TINY_CONFIG, 'text_cfg': text_cfg})}@random")
    assert roberta_like.tokenizer(["blue white veil"])[0, -1] == 1
    with caplog.at_level("WARNING", logger="cbm.encoders.encoder"):
        roberta_like.encode_text(["irregular border", "blue white veil"])
    assert "fill the text tower" not in caplog.text
    with caplog.at_level("WARNING", logger="cbm.encoders.encoder"):
        roberta_like.encode_text(["irregular border " * 8])
    assert "1 text(s) fill the text tower's 12 tokens" in caplog.text


def test_a_tokenizer_that_is_not_the_text_towers_is_named_not_an_index_error(tmp_path):
    # a config whose text tower has BERT's 30522 tokens but no tokenizer of its own gets CLIP's (49408 ids):
    # encoding failed with torch's "IndexError: index out of range in self"
    from cbm.encoders.testing import TINY_CONFIG

    config = {**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "vocab_size": 30522}}
    enc = create_encoder(f"{write_tiny_config(tmp_path, config=config)}@random")
    with pytest.raises(ValueError, match=r"tokenizer gives token id 49407, but the text tower has 30522 tokens.*vocab_size"):
        encode_texts(enc, ["irregular border"])
