"""cbm.encoders.loading: safe checkpoint reading, and clear errors for checkpoints that do not fit."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from cbm.encoders import create_encoder
from cbm.encoders.loading import read_state_dict
from cbm.encoders.testing import write_tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-loading")
    config = write_tiny_config(folder)
    enc = create_encoder(f"{config}@random")
    return folder, config, {k: v.clone().contiguous() for k, v in enc.model.state_dict().items()}


def test_plain_tensor_pt_and_wrapped_checkpoints_load(tiny):
    folder, config, state = tiny
    x = torch.randn(2, 3, 64, 64)
    reference = create_encoder(f"{config}@random").encode_image(x)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "ddp.pt")
    loaded = create_encoder(f"{config}@{folder / 'ddp.pt'}")
    assert torch.equal(loaded.encode_image(x), reference)


def test_mismatched_checkpoint_lists_missing_unexpected_and_misshaped_keys(tiny):
    folder, config, state = tiny
    bad = dict(state)
    del bad["visual.proj"]
    bad["visual.extra_head.weight"] = torch.zeros(3)
    bad["text_projection"] = torch.zeros(64, 32)
    path = folder / "mismatched.safetensors"
    save_file(bad, str(path))
    with pytest.raises(ValueError) as err:
        create_encoder(f"{config}@{path}")
    msg = str(err.value)
    assert str(path) in msg
    assert "1 key(s) missing from the checkpoint: visual.proj" in msg
    assert "1 key(s) not in the model (unexpected): visual.extra_head.weight" in msg
    assert "text_projection (64, 32) vs (64, 64)" in msg
    assert "ARCH@WEIGHTS" in msg


class _Payload:
    """Unpickling this would create a file: proof that a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_of_arbitrary_objects_is_refused_without_running_it(tiny):
    folder, config, state = tiny
    marker = folder / "pwned"
    path = folder / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": state, "hook": _Payload(marker)}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"refused: it is a pickle holding more than tensors.*safetensors"):
        create_encoder(f"{config}@{path}")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "neither a PyTorch checkpoint nor a safetensors file"),
        (b"\x00" * 64, "neither a PyTorch checkpoint nor a safetensors file"),
    ],
)
def test_garbage_pt_files_are_reported(tmp_path, content, match):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_state_dict(path)


def test_truncated_safetensors_and_missing_files_are_reported(tiny, tmp_path):
    folder, config, state = tiny
    good = tmp_path / "w.safetensors"
    save_file(state, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_state_dict(cut)
    with pytest.raises(FileNotFoundError, match="is not an existing checkpoint file"):
        create_encoder(f"{config}@{tmp_path / 'absent.safetensors'}")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_a_checkpoint_is_read_by_what_it_holds_not_by_its_name(tiny, tmp_path):
    # a safetensors file saved as .bin was refused as "a pickle holding more than tensors", and so were an
    # error page and a Git LFS pointer, with advice to unpickle them with weights_only=False
    folder, config, state = tiny
    renamed = tmp_path / "open_clip_pytorch_model.bin"
    save_file(state, str(renamed))
    loaded = read_state_dict(renamed)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    page = tmp_path / "page.bin"
    page.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    with pytest.raises(ValueError, match=r"page.bin is neither a PyTorch checkpoint nor a safetensors file \(it begins b'<!DOCTYPE") as err:
        read_state_dict(page)
    assert "weights_only=False" not in str(err.value) and "re-download" in str(err.value)
    pointer = tmp_path / "open_clip_model.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 598\n")
    with pytest.raises(ValueError, match=r"is a Git LFS pointer, not the weights.*git lfs pull"):
        read_state_dict(pointer)
