"""Pretrain ``demo-clip``, the demo world's small CLIP, contrastively on CPU (or a GPU if there is one).

The shipped weights come from one run of 30 minutes on both cores of a two-core machine (it writes
cbm/demo/assets/; the runs before it are in docs/demo-clip-runs/):

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/pretrain_demo_clip.py --minutes 30 --short-fraction 1.0 --short-lr 2e-3 --short-warmup 200

A smoke run (a minute; writes elsewhere):

    .venv/bin/python scripts/pretrain_demo_clip.py --corpus 2000 --steps 20 --batch 64 --out /tmp/demo-clip

What it does: render a corpus of scenes from the demo world's own random stream (cached in
``$CBM_CACHE_DIR/demo/corpus``), caption every image afresh at each visit (``cbm.demo.corpus``),
and train an open_clip ``CLIP`` (``DEMO_CLIP_CONFIG``: the ``local_global_cnn`` image tower at
64 px, 8 x 8 cells, and a 2-layer text transformer) with a contrastive loss, AdamW, warm-up and
cosine decay. The loss is CLIP's, except that every image a caption is true of counts as a right
answer for it, not only its own (``--true-caption-positives``, the default; ``clip_loss``): with
plain CLIP the text tower of one run never separated the marks' prompts from the rest (ruler AUROC
0.44-0.55 over 3,000 steps) and shape never entered the image embedding; with it the marks reached
1.00 in 250 steps, border irregularity 0.94 in 1,000 and asymmetry 0.87 in 1,500. With
``--minutes`` the learning rate decays over the wall-clock budget (the machine may be shared, so
the speed varies) and training stops when it is spent; the number of steps is recorded. Every
corpus image is shrunk to the encoder's input in one of four ways (drawn natively, area,
anti-aliased bicubic, plain bicubic), so the encoder does not care how a 128 px demo image is
resized.

Every ``--select-every`` steps (and at the end) the model is scored zero-shot on held-out images
of the world's selection stream (``SELECT_STREAM``, never the evaluation stream that
``scripts/eval_demo_clip.py`` reports on): the AUROC of every core concept's prompt, combined
by ``cbm.demo.evaluation.selection_score`` (the mean minus the shortfall of any concept below
0.85), minus the shortfall of the concept maps' pointing game below ``POINTING_FLOOR`` on 200 of
those images. The best-scoring checkpoint is the one saved, and the record lists every score: a
small image tower can learn a concept and later lose it to the others.

The last ``--short-fraction`` of training (default half) captions each image with one or two
statements, on a schedule of its own (warm-up, then cosine decay from ``--short-lr``): on full
captions the colours and structures alone tell the images of a batch apart and the tower stops
encoding shape; one-statement captions make every concept pay.

With ``--hard-negatives`` each image of that phase also gets a hard negative (NegCLIP, Yuksekgonul
et al. 2023): its own caption with one statement made false ("symmetric shape" for an asymmetric
lesion, "white areas" for red ones), one more wrong answer for every image. Off by default: from the
first step they kept the text tower from learning at all (every prompt embedded alike after 750
steps), and in the second half of a run they did not teach shape either (docs/demo-clip-runs/).

Outputs: ``demo-clip.json`` (open_clip config), ``demo-clip.safetensors`` (fp16 state dict) and
``demo-clip.training.json`` (seed, steps, losses, corpus hash, wall time, machine). While it runs,
``checkpoint/`` under the output folder holds the state at the last selection (weights, optimizer,
random state, clock) and the best weights so far: an interrupted run (Ctrl-C saves at once)
continues with ``--resume`` and the same ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cbm.demo.corpus import (
    CORPUS_STREAM,
    SELECT_STREAM,
    CaptionTokenizer,
    caption_pieces,
    contradiction,
    corpus_scene,
    render_for_encoder,
    true_statements,
)
from cbm.demo.encoder import ASSETS, MODEL_NAME
from cbm.demo.evaluation import (
    POINTING_CONCEPTS,
    embed_images,
    embed_texts,
    held_out_batch,
    pointing_on_scenes,
    selection_score,
    zero_shot,
)
from cbm.demo.render import RENDER_VERSION
from cbm.demo.world import lesion_attributes
from cbm.utils import atomic_write_bytes, atomic_write_json, cache_dir, sha256_bytes, stable_hash

log = logging.getLogger("pretrain_demo_clip")

DEMO_CLIP_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 64,
        "timm_model_name": "local_global_cnn",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
    },
    "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}
"""The architecture: ``local_global_cnn`` (``cbm.encoders.towers``): a plain CNN whose 8 x 8 cells see
27 px each at 64 px, plus a whole-image vector from a strided branch over those cells, added onto
every cell and left out for half the images in training; average-pooled and projected, so a concept
map is each cell's exact share of the image's concept score (CAM). Colours and structures are
local and must live in the cells; shape is global and lives in the added vector. And a 2-layer
causal text transformer over the CLIP BPE vocabulary. Earlier towers, each tried for 55 minutes:
``resnet_tiny_os8`` (its cells see more than the image; maps peaked off the lesion) and
``resnet_tiny_os8_vit`` (attention spreads every concept over all tokens); both pointed worse than a
map fixed on the middle cell. Average pooling matters: in a trial, an attention-pooled ModifiedResNet
kept the ruler in its trunk (linearly decodable at 95 %) but dropped it from the embedding (chance),
so the cue never reached the image features."""

_RESIZE_METHODS = ("native", "box", "bicubic", "bicubic-noaa")
_MAX_SIZE_MB = 25.0


# --- corpus --------------------------------------------------------------------------------------


_CHUNK = 5000  # corpus images per cache file; a bigger corpus reuses the chunks of a smaller one


def _render_range(args: tuple[int, int, int, int]) -> np.ndarray:
    start, stop, seed, size = args
    out = np.empty((stop - start, size, size, 3), np.uint8)
    for k, i in enumerate(range(start, stop)):
        method = _RESIZE_METHODS[i % len(_RESIZE_METHODS)]
        out[k] = render_for_encoder(corpus_scene(i, seed), size, method)
    return out


def build_corpus(n: int, seed: int, size: int, workers: int) -> tuple[np.ndarray, str]:
    """Render (or load from the cache) ``n`` corpus images; returns ``(images, corpus_hash)``."""
    from safetensors.numpy import load_file, save_file
    from tqdm import tqdm

    key = stable_hash({"seed": seed, "size": size, "render": RENDER_VERSION, "stream": CORPUS_STREAM,
                       "methods": _RESIZE_METHODS, "chunk": _CHUNK})
    folder = cache_dir("demo", "corpus")
    images = np.empty((n, size, size, 3), np.uint8)
    t0 = time.perf_counter()
    missing = []
    for c in range(math.ceil(n / _CHUNK)):
        path = folder / f"corpus-{key}-{c:04d}.safetensors"
        lo, hi = c * _CHUNK, min((c + 1) * _CHUNK, n)
        stored = load_file(str(path))["images"] if path.is_file() else None
        if stored is not None and len(stored) >= hi - lo:  # a chunk holds up to _CHUNK images
            images[lo:hi] = stored[: hi - lo]
        else:
            missing.append((lo, hi, path))
    if missing:
        part = 500
        with mp.get_context("fork").Pool(workers) as pool, tqdm(total=sum(hi - lo for lo, hi, _ in missing), desc="corpus") as bar:
            for lo, hi, path in missing:
                jobs = [(s, min(s + part, hi), seed, size) for s in range(lo, hi, part)]
                for s, pixels in zip(range(lo, hi, part), pool.imap(_render_range, jobs)):
                    images[s : s + len(pixels)] = pixels
                    bar.update(len(pixels))
                tmp = path.with_suffix(".tmp")
                save_file({"images": np.ascontiguousarray(images[lo:hi])}, str(tmp))
                os.replace(tmp, path)
    log.info("corpus: %d images (%d chunks drawn) in %.0f s", n, len(missing), time.perf_counter() - t0)
    attributes = [lesion_attributes(corpus_scene(i, seed).lesion) for i in range(min(n, 1000))]
    digest = sha256_bytes(images.tobytes() + json.dumps(attributes, sort_keys=True).encode())
    return images, digest


# --- model ---------------------------------------------------------------------------------------


def build_model(config: dict, seed: int) -> torch.nn.Module:
    """The CLIP of ``config`` with its seeded initialisation; ``SystemExit`` with one line for an unknown tower."""
    from open_clip.model import CLIP

    from cbm.encoders.towers import register_towers

    register_towers()
    torch.manual_seed(seed)
    try:
        return CLIP(**config)
    except RuntimeError as exc:
        tower = config["vision_cfg"].get("timm_model_name")
        raise SystemExit(f"pretrain_demo_clip: error: unknown image tower {tower!r} ({str(exc)[:120]}); use a timm "
                         "architecture or one of cbm.encoders.towers") from None


def encode_text_trimmed(model: torch.nn.Module, text: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` for a batch padded only to its longest caption (same result: the
    text tower is causal and pools the end token, so trailing padding never reaches it)."""
    n = int((text > 0).sum(1).max())
    text = text[:, :n]
    x = model.token_embedding(text) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def encode_text_bucketed(model: torch.nn.Module, text: torch.Tensor, buckets: int) -> torch.Tensor:
    """Text features of a batch, encoded in ``buckets`` groups of similar caption length so that
    little compute goes into padding; rows come back in the input order."""
    lengths = (text > 0).sum(1)
    order = torch.argsort(lengths)
    parts = [encode_text_trimmed(model, text[idx]) for idx in torch.tensor_split(order, buckets)]
    out = torch.empty(len(text), parts[0].shape[1], dtype=parts[0].dtype, device=text.device)
    out[order] = torch.cat(parts)
    return out


class ThreadTuner:
    """Pick the faster of 1 or ``max_threads`` torch threads, and re-check now and then.

    On a machine shared with other jobs, two threads can be several times slower than one (the
    threads wait on each other); when the machine is idle, two are faster. Every ``every`` steps
    both settings are timed on ``trial`` steps each and the faster one is kept.
    """

    def __init__(self, max_threads: int, every: int = 200, trial: int = 4) -> None:
        self.options = sorted({1, max_threads})
        self.every, self.trial = every, trial
        self.current = self.options[-1]
        self.timings: dict[int, list[float]] = {}
        self.history: list[tuple[int, int]] = []

    def before(self, step: int) -> None:
        phase = step % self.every
        if len(self.options) > 1 and phase < self.trial * len(self.options):
            threads = self.options[phase // self.trial]
            if phase == 0:
                self.timings = {}
        else:
            if len(self.options) > 1 and phase == self.trial * len(self.options) and self.timings:
                best = min(self.timings, key=lambda k: float(np.median(self.timings[k])))
                if best != self.current or not self.history:
                    self.history.append((step, best))
                self.current = best
            threads = self.current
        torch.set_num_threads(threads)
        self._threads, self._t0 = threads, time.perf_counter()

    def after(self, step: int) -> None:
        if step % self.every < self.trial * len(self.options):
            self.timings.setdefault(self._threads, []).append(time.perf_counter() - self._t0)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """The CLIP loss of ``len(img)`` pairs (image i with caption i); captions past ``len(img)`` are
    hard negatives (NegCLIP), extra wrong answers for every image, never images' captions.

    ``same`` (``(B, B)`` bool, ``same[i, j]``: caption i is true of image j) makes every image a
    caption is true of a right answer for it, and every caption true of an image a right answer for
    that image, the targets spread evenly over them (as UniCL, Yang et al. 2022, does for images of
    one label). A short caption is true of many images of a batch ("asymmetric shape" of two thirds
    of them); plain CLIP counts all but one as wrong answers, so a common attribute is taught mostly
    as noise, while here a text must pick the images it is true of, and only those."""
    n = len(img)
    image_to_text = scale * img @ txt.t()
    text_to_image = scale * txt[:n] @ img.t()
    if same is None:
        labels = torch.arange(n, device=img.device)
        return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(text_to_image, labels)) / 2
    fits = same.float()
    to_images = fits / fits.sum(1, keepdim=True)  # text i: the images it is true of
    to_text = torch.zeros_like(image_to_text)
    to_text[:, :n] = fits.t() / fits.t().sum(1, keepdim=True)  # image j: the captions true of it
    loss_i = -(to_text * F.log_softmax(image_to_text, dim=1)).sum(1).mean()
    loss_t = -(to_images * F.log_softmax(text_to_image, dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name or "embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _augment(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random rotation by a multiple of 90 degrees and flip (every attribute is invariant to both)."""
    which = rng.integers(0, 8, size=len(batch))
    out = batch.clone()
    for k in range(8):
        sel = np.flatnonzero(which == k)
        if len(sel):
            x = torch.rot90(batch[sel], k % 4, dims=(2, 3))
            out[sel] = torch.flip(x, dims=(3,)) if k >= 4 else x
    return out


# --- checkpoint selection ------------------------------------------------------------------------


class Selector:
    """Score the model on held-out selection images now and then; keep the best weights."""

    def __init__(self, config: dict, n: int, seed: int) -> None:
        import open_clip

        size = config["vision_cfg"]["image_size"]
        self.scenes = [corpus_scene(i, seed, stream=SELECT_STREAM) for i in range(n)]
        self.masks: list = []
        self.batch = held_out_batch(self.scenes, size, masks=self.masks)
        self.tokenizer = open_clip.get_tokenizer("RN50", context_length=config["text_cfg"]["context_length"])
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def __call__(self, model: torch.nn.Module, step: int, loss: float) -> dict:
        t0 = time.perf_counter()
        model.eval()
        try:
            result = zero_shot(model, self.tokenizer, embed_images(model, self.batch), self.scenes)
            pointing = self.pointing(model)
        finally:
            model.train()
        entry = {
            "step": step,
            "loss": round(loss, 4),
            "score": round(selection_score(result) - max(0.0, POINTING_FLOOR - (pointing or 0.0)), 4),
            "pointing_mean": pointing,
            "mean_auroc": result["mean_auroc"],
            "min_auroc": result["min_auroc"],
            "min_concept": result["min_concept"],
            "concept_auroc": {k: v["auroc"] for k, v in result["concept_auroc"].items()},
            "cue_auroc": result["cue_auroc"],
            "class_accuracy": {k: v["accuracy"] for k, v in result["zero_shot_class_accuracy"].items()},
            "class_auroc": result["zero_shot_class_auroc"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        self.history.append(entry)
        if self.best is None or entry["score"] > self.best["score"]:
            self.best = entry
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return entry

    def pointing(self, model: torch.nn.Module, n: int = 200) -> float | None:
        """The pointing game of the concept maps of the plain prompt embeddings on the first ``n``
        selection images (None for a tower without maps)."""
        from types import SimpleNamespace

        from cbm.explain.maps import encode_spatial

        phrases = list(POINTING_CONCEPTS)
        directions = embed_texts(model, self.tokenizer, phrases)
        encoder = SimpleNamespace(model=model, name=MODEL_NAME)
        try:
            with torch.no_grad():
                maps = np.stack([encode_spatial(encoder, image).concept_maps(phrases, directions).raw
                                 for image in self.batch[:n]])
        except (RuntimeError, ValueError):
            return None
        return pointing_on_scenes(maps, self.scenes[:n], self.masks[:n])["pointing_mean"]


POINTING_FLOOR = 0.70
"""The encoder's pointing target: a checkpoint whose maps point worse on the selection images pays
the shortfall in its selection score, as a concept below the AUROC floor does."""


# --- checkpoints -------------------------------------------------------------------------------


CHECKPOINT = "checkpoint"
"""Subfolder of --out that holds the last state of a run and its best weights so far; a run that
was interrupted (Ctrl-C, a crash, a killed job) continues from it with --resume."""
_RESUMABLE = ("corpus", "minutes", "steps", "batch", "lr", "weight_decay", "warmup", "seed", "select_every",
              "select_n", "short_fraction", "short_max", "short_lr", "short_warmup", "fp32", "text_buckets",
              "image_size", "timm_model", "init", "init_trunk", "reserve_s", "hard_negatives",
              "true_caption_positives")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW's state as flat tensors (safetensors) plus its JSON-able rest."""
    state = optimizer.state_dict()
    tensors = {f"opt.{i}.{k}": v.detach().cpu().contiguous() for i, st in state["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": state["param_groups"], "indices": sorted(state["state"])}


def save_checkpoint(folder: Path, model, optimizer, selector, run: dict) -> None:
    """The run's state, written atomically: a crash while writing leaves the previous checkpoint."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    opt, opt_json = _optimizer_tensors(optimizer)
    model_t = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    arrays = {"order": torch.from_numpy(np.asarray(run["order"], np.int64)),
              "losses": torch.tensor(run["losses"], dtype=torch.float64)}
    atomic_write_bytes(folder / "last.safetensors", save({**model_t, **opt, **arrays}))
    if selector is not None and selector.best_state is not None:
        atomic_write_bytes(folder / "best.safetensors", save({k: v.cpu().contiguous() for k, v in selector.best_state.items()}))
    atomic_write_json(folder / "state.json", {
        "step": run["step"], "cursor": run["cursor"], "short_start": run["short_start"],
        "train_elapsed_s": run["train_elapsed_s"], "rng": run["rng"].bit_generator.state, "optimizer": opt_json,
        "selector": None if selector is None else {"best": selector.best, "history": selector.history},
        "args": {k: run["args"][k] for k in _RESUMABLE},
    })


def load_checkpoint(folder: Path, args: argparse.Namespace) -> dict:
    """The state saved by :func:`save_checkpoint`; ``SystemExit`` with one line when it cannot resume."""
    from safetensors.torch import load_file

    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "last.safetensors"))
        best = load_file(str(folder / "best.safetensors")) if (folder / "best.safetensors").is_file() else None
    except FileNotFoundError:
        raise SystemExit(f"pretrain_demo_clip: error: no checkpoint to resume in {folder} (state.json and "
                         "last.safetensors); start a new run without --resume") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"pretrain_demo_clip: error: the checkpoint in {folder} is unreadable ({str(exc)[:120]}); "
                         "start a new run without --resume") from None
    for key, value in state["args"].items():  # the interrupted run's settings win: the schedule depends on them
        setattr(args, key, value)
    return {"state": state, "tensors": tensors, "best": best}


def _restore(checkpoint: dict, model, optimizer, selector) -> dict:
    """Load a checkpoint's weights and optimizer into place; returns the run's counters."""
    state, tensors = checkpoint["state"], checkpoint["tensors"]
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    opt = state["optimizer"]
    optimizer.load_state_dict({
        "state": {i: {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")} for i in opt["indices"]},
        "param_groups": opt["param_groups"],
    })
    if selector is not None and state["selector"]:
        selector.best, selector.history = state["selector"]["best"], state["selector"]["history"]
        selector.best_state = checkpoint["best"]
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    return {"step": state["step"], "cursor": state["cursor"], "short_start": state["short_start"],
            "train_elapsed_s": state["train_elapsed_s"], "rng": rng, "order": tensors["order"].numpy(),
            "losses": tensors["losses"].tolist()}


# --- training ------------------------------------------------------------------------------------


def _learning_rate(args: argparse.Namespace, run: dict, progress: float, short: bool) -> float:
    """Warm-up then cosine decay over the run; in the short-caption phase a second schedule of its own."""
    step = run["step"]
    if short and args.short_lr:
        run["short_start"] = step if run["short_start"] is None else run["short_start"]
        phase = (progress - (1.0 - args.short_fraction)) / args.short_fraction
        return args.short_lr * min(1.0, (step - run["short_start"] + 1) / args.short_warmup) * 0.5 * (1 + math.cos(math.pi * phase))
    return args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * progress))


def train(args: argparse.Namespace) -> dict:
    """Pretrain, scoring on the selection stream every --select-every steps and checkpointing then.

    Long on purpose: one loop a reader follows top to bottom, as nanoGPT's is; its pieces (corpus,
    schedule, checkpoints, selection) are functions of their own.
    """
    import open_clip

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    out = Path(args.out)
    checkpoint = load_checkpoint(out / CHECKPOINT, args) if args.resume else None
    t_start = time.perf_counter()
    config = json.loads(json.dumps(DEMO_CLIP_CONFIG))
    if args.image_size:
        config["vision_cfg"]["image_size"] = args.image_size
    if args.timm_model:
        config["vision_cfg"]["timm_model_name"] = args.timm_model
    model = build_model(config, args.seed)  # before the corpus: an unknown architecture fails at once
    size = config["vision_cfg"]["image_size"]
    images, corpus_hash = build_corpus(args.corpus, args.seed, size, args.workers)
    scenes = [corpus_scene(i, args.seed) for i in range(args.corpus)]
    t_corpus = time.perf_counter() - t_start

    if args.init and checkpoint is None:
        model.load_state_dict(read_assets_weights(Path(args.init), config))
        log.info("initialised from %s", args.init)
    if args.init_trunk and checkpoint is None:
        args.init_trunk_loaded = load_trunk_weights(Path(args.init_trunk), model)
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2f M parameters (image tower %.2f M)", n_params / 1e6,
             sum(p.numel() for p in model.visual.parameters()) / 1e6)
    tokenizer = CaptionTokenizer(open_clip.get_tokenizer("RN50"), config["text_cfg"]["context_length"])
    optimizer = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1) * 255
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 (N, 3, H, W), shared memory
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.fp32)
    selector = Selector(config, args.select_n, args.seed) if args.select_every else None
    if checkpoint is None:
        rng = np.random.default_rng([args.seed, CORPUS_STREAM, 7])
        run = {"step": 0, "cursor": 0, "short_start": None, "train_elapsed_s": 0.0, "rng": rng,
               "order": rng.permutation(len(scenes)), "losses": []}
    else:
        run = _restore(checkpoint, model, optimizer, selector)
        log.info("resumed at step %d (%.0f s of training done)", run["step"], run["train_elapsed_s"])
    run["args"] = vars(args)
    rng, losses = run["rng"], run["losses"]
    tuner = ThreadTuner(args.threads)
    steps = args.steps
    t_train = time.perf_counter() - run["train_elapsed_s"]  # a resumed run continues its clock
    train_budget = args.minutes * 60 - t_corpus - args.reserve_s
    if steps is None and train_budget < 60:
        raise SystemExit(f"pretrain_demo_clip: error: only {train_budget:.0f} s are left for training after the corpus; "
                         "raise --minutes")

    truth_cache: dict[int, frozenset[str]] = {}

    def truth_of(i: int) -> frozenset[str]:
        if i not in truth_cache:
            truth_cache[i] = true_statements(scenes[i])
        return truth_cache[i]

    def progress_now() -> float:
        return run["step"] / steps if steps is not None else (time.perf_counter() - t_train) / train_budget

    try:
        while True:
            if run["cursor"] + args.batch > len(run["order"]):
                run["order"], run["cursor"] = rng.permutation(len(scenes)), 0
            tuner.before(run["step"])
            idx = run["order"][run["cursor"] : run["cursor"] + args.batch]
            run["cursor"] += args.batch
            x = _augment(pixels[idx], rng).to(device).float()
            x = (x - mean) / std
            # Cosine decay over the steps, or (with --minutes) over the wall-clock budget: on a shared
            # machine the speed varies, and a time-based schedule still ends on time and at lr 0.
            progress = progress_now()
            if progress >= 1.0:
                break
            short = bool(args.short_fraction) and progress >= 1.0 - args.short_fraction
            captions = [caption_pieces(scenes[i], rng, max_statements=args.short_max if short else None) for i in idx]
            if args.hard_negatives and short:  # NegCLIP: one caption per image with a single statement made false
                negatives = [contradiction(c, scenes[i].lesion, rng) for c, i in zip(captions, idx)]
                captions = captions + [c for c in negatives if c is not None]
            text = torch.from_numpy(tokenizer.batch(captions)).to(device)
            lr = _learning_rate(args, run, progress, short)
            for group in optimizer.param_groups:
                group["lr"] = lr

            with autocast:
                img = F.normalize(model.encode_image(x), dim=-1)
                txt = encode_text_bucketed(model, text, args.text_buckets)
            same = None
            if args.true_caption_positives:
                truths = [truth_of(i) for i in idx]
                same = torch.tensor([[all(p in t for p in c[1:]) for t in truths] for c in captions[: len(idx)]],
                                    device=device)
            loss = clip_loss(img.float(), txt.float(), model.logit_scale.exp(), same)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            tuner.after(run["step"])
            run["step"] += 1
            step = run["step"]
            if step % args.log_every == 0:
                elapsed = time.perf_counter() - t_train
                print(json.dumps({"step": step, "of": steps, "loss": round(float(np.mean(losses[-args.log_every:])), 4),
                                  "lr": round(lr, 6), "logit_scale": round(model.logit_scale.exp().item(), 2),
                                  "img_per_s": round(step * args.batch / elapsed, 1), "elapsed_s": round(elapsed),
                                  "threads": tuner.current}),
                      flush=True)
            if selector is not None and step % args.select_every == 0:
                entry = selector(model, step, float(np.mean(losses[-args.select_every:])))
                print(json.dumps({k: entry[k] for k in ("step", "score", "mean_auroc", "min_auroc", "min_concept", "class_auroc",
                                                        "pointing_mean")}
                                 | {"weakest": dict(sorted(entry["concept_auroc"].items(), key=lambda kv: kv[1])[:3])}),
                      flush=True)
                run["train_elapsed_s"] = time.perf_counter() - t_train
                save_checkpoint(out / CHECKPOINT, model, optimizer, selector, run)
    except KeyboardInterrupt:
        run["train_elapsed_s"] = time.perf_counter() - t_train
        save_checkpoint(out / CHECKPOINT, model, optimizer, selector, run)
        raise SystemExit(f"pretrain_demo_clip: interrupted at step {run['step']}; the state is in {out / CHECKPOINT}: "
                         "continue with the same --out and --resume") from None
    step = run["step"]
    if selector is not None and step % args.select_every:
        selector(model, step, float(np.mean(losses[-(step % args.select_every):])))
    if selector is not None:
        model.load_state_dict(selector.best_state)
        log.info("kept the checkpoint of step %d of %d (selection score %.4f, mean AUROC %.4f, min %.4f: %s)",
                 selector.best["step"], step, selector.best["score"], selector.best["mean_auroc"],
                 selector.best["min_auroc"], selector.best["min_concept"])
    t_total = time.perf_counter() - t_start
    return {
        "model": model, "config": config, "steps": step, "losses": losses, "corpus_hash": corpus_hash,
        "wall_s": t_total, "corpus_s": t_corpus, "train_s": time.perf_counter() - t_train, "device": str(device),
        "n_params": n_params, "thread_choices": tuner.history, "selector": selector, "resumed": checkpoint is not None,
    }


def load_trunk_weights(folder: Path, model: torch.nn.Module) -> dict:
    """Start from an earlier run's CNN trunk and text tower although its image tower differs: the
    ``resnet_tiny_os8`` trunk becomes the patch embedding of ``resnet_tiny_os8_vit``; every weight
    whose name and shape match is loaded, the rest (the transformer, the projection) starts fresh."""
    from safetensors.torch import load_file

    path = folder / f"{MODEL_NAME}.safetensors"
    if not path.is_file():
        raise SystemExit(f"pretrain_demo_clip: error: --init-trunk {folder} has no {path.name}; give a folder a previous "
                         "run wrote (its --out)")
    own = model.state_dict()
    mapped = {}
    for key, value in load_file(str(path)).items():
        if key.startswith("visual.trunk.") and not key.startswith("visual.trunk.patch_embed."):
            key = "visual.trunk.patch_embed.backbone." + key[len("visual.trunk."):]
        if key in own and own[key].shape == value.shape:
            mapped[key] = value.float()
    if not any(k.startswith("visual.trunk.patch_embed.backbone.") for k in mapped):
        raise SystemExit(f"pretrain_demo_clip: error: --init-trunk {folder}: none of its image-tower weights fits this "
                         "architecture's trunk; use --init for weights of the same architecture")
    model.load_state_dict(mapped, strict=False)
    fresh = sorted({k.rsplit(".", 2)[0] for k in own if k not in mapped})
    log.info("initialised %d of %d tensors from %s; fresh: %s", len(mapped), len(own), folder, ", ".join(fresh[:8]))
    return {"folder": str(folder), "tensors_loaded": len(mapped), "tensors_fresh": len(own) - len(mapped)}


def read_assets_weights(folder: Path, config: dict) -> dict[str, torch.Tensor]:
    """The weights of an assets folder (``--init``), checked against this run's config; ``SystemExit``
    with one line when the folder lacks them or they belong to another architecture."""
    from safetensors.torch import load_file

    path = folder / f"{MODEL_NAME}.safetensors"
    if not path.is_file():
        raise SystemExit(f"pretrain_demo_clip: error: --init {folder} has no {path.name}; give a folder a previous run "
                         "wrote (its --out)")
    saved = folder / f"{MODEL_NAME}.json"
    if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) != config:
        raise SystemExit(f"pretrain_demo_clip: error: --init {folder} holds weights of another architecture "
                         f"({saved.name} differs from this run's config); start from weights of the same one, or without --init")
    return {k: v.float() for k, v in load_file(str(path)).items()}


def save(result: dict, args: argparse.Namespace) -> None:
    from safetensors.torch import save

    restart = args.short_lr if args.short_fraction else 0.0  # a restarted schedule only with a short phase
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = result["model"].eval()
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": "pt", "model": MODEL_NAME})
    size_mb = len(blob) / 2**20
    if size_mb > _MAX_SIZE_MB:
        raise RuntimeError(f"the weights take {size_mb:.1f} MB, over the {_MAX_SIZE_MB} MB the package allows")
    atomic_write_bytes(out / f"{MODEL_NAME}.safetensors", blob)
    atomic_write_json(out / f"{MODEL_NAME}.json", result["config"])
    losses = result["losses"]
    tail = losses[-min(len(losses), 50):]
    record = {
        "model": MODEL_NAME,
        "seed": args.seed,
        "steps": result["steps"],
        "batch_size": args.batch,
        "images_seen": result["steps"] * args.batch,
        "corpus_size": args.corpus,
        "corpus_hash": result["corpus_hash"],
        "render_version": RENDER_VERSION,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup,
        "short_captions": {"last_fraction": args.short_fraction, "max_statements": args.short_max,
                           "lr": restart or None, "warmup_steps": args.short_warmup if restart else None},
        "loss": {"true_caption_positives": bool(args.true_caption_positives),
                 "hard_negatives": "short-caption phase" if args.hard_negatives else None},
        "precision": "fp32" if args.fp32 else "bf16 autocast",
        "first_loss": round(float(np.mean(losses[:10])), 4),
        "final_loss": round(float(np.mean(tail)), 4),
        "final_loss_note": f"mean CLIP loss of the last {len(tail)} steps",
        "parameters": result["n_params"],
        "weights_mb": round(size_mb, 2),
        "weights_sha256": sha256_bytes(blob),
        "wall_time_s": round(result["wall_s"], 1),
        "corpus_time_s": round(result["corpus_s"], 1),
        "train_time_s": round(result["train_s"], 1),
        "machine": {
            "device": result["device"],
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads_max": args.threads,
            "torch_threads_chosen": result["thread_choices"],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "selection": _selection_record(result["selector"], args),
        "initialised_from": _init_record(args.init or args.init_trunk, getattr(args, "init_trunk_loaded", None)),
        "resumed": result["resumed"],
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "loss_curve": [round(float(np.mean(losses[i : i + 50])), 4) for i in range(0, len(losses), 50)],
    }
    atomic_write_json(out / f"{MODEL_NAME}.training.json", record)
    log.info("wrote %s (%.1f MB), config and training record to %s", f"{MODEL_NAME}.safetensors", size_mb, out)


def _init_record(init: str | None, partial: dict | None = None) -> dict | None:
    """The training record of the weights this run started from (so the record covers every stage);
    ``partial``: what ``--init-trunk`` loaded of them."""
    if not init:
        return None
    path = Path(init) / f"{MODEL_NAME}.training.json"
    out = {"folder": str(init), "record": json.loads(path.read_text()) if path.is_file() else None}
    return out if partial is None else {**out, "partial": partial}


def _selection_record(selector: Selector | None, args: argparse.Namespace) -> dict | None:
    if selector is None:
        return None
    return {
        "kept_step": selector.best["step"],
        "kept": selector.best,
        "images": args.select_n,
        "stream": SELECT_STREAM,
        "every_steps": args.select_every,
        "score": "mean concept AUROC minus the shortfall of the concepts below 0.85 (cbm.demo.evaluation.selection_score) "
                 f"and of the maps' pointing game below {POINTING_FLOOR} (on the first 200 images)",
        "history": [{k: e[k] for k in ("step", "loss", "score", "mean_auroc", "min_auroc", "min_concept", "pointing_mean")}
                    for e in selector.history],
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ASSETS), help="folder for the weights, config and record")
    p.add_argument("--corpus", type=int, default=40_000, help="number of distinct corpus images")
    p.add_argument("--minutes", type=float, default=55.0, help="wall-time budget, corpus included")
    p.add_argument("--steps", type=int, default=None, help="fixed number of steps (overrides --minutes)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=None, help="the image tower's input size (default: the config's)")
    p.add_argument("--timm-model", default=None, help="the image tower's timm architecture (default: the config's)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--text-buckets", type=int, default=4, help="length groups per text batch (less padding)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16),
                   help="most torch threads; 1 or this many is chosen by timing, again every 200 steps")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes rendering the corpus")
    p.add_argument("--reserve-s", type=float, default=60.0, help="seconds kept for saving and slack")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--select-every", type=int, default=250,
                   help="score the model on held-out selection images every this many steps and keep the best (0: keep the last)")
    p.add_argument("--select-n", type=int, default=500, help="held-out selection images")
    p.add_argument("--init", default=None, help="start from the weights in this assets folder")
    p.add_argument("--init-trunk", default=None,
                   help="start the CNN trunk and the text tower from this assets folder, though its image tower differs")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the interrupted run whose state is in --out/{CHECKPOINT} (its settings are used)")
    p.add_argument("--short-fraction", type=float, default=0.5,
                   help="the last fraction of training uses short captions (1 to --short-max statements)")
    p.add_argument("--short-max", type=int, default=2)
    p.add_argument("--short-lr", type=float, default=1e-3,
                   help="restart the schedule at this peak lr for the short-caption phase (0: no restart)")
    p.add_argument("--short-warmup", type=int, default=50, help="warm-up steps of the restarted schedule")
    p.add_argument("--hard-negatives", action=argparse.BooleanOptionalAction, default=False,
                   help="in the short-caption phase, add a caption per image with one statement made false, as a "
                        "wrong answer (NegCLIP)")
    p.add_argument("--true-caption-positives", action=argparse.BooleanOptionalAction, default=True,
                   help="every image a caption is true of is a right answer for it, not only its own (UniCL-style)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file; give a folder")
    if args.init and not Path(args.init).is_dir():
        p.error(f"--init {args.init} is not a folder; give the --out folder of an earlier run")
    result = train(args)
    save(result, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
