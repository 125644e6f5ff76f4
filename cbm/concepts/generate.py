"""``generate_concepts``: fill a card's concept store from an LLM, only where something changed.

For every class the request (prompt version and rendered messages, model, temperature, seed) is
hashed; a class whose stored answer has the same key is not asked again, so a re-run with the
same inputs sends no request (``refresh=True`` asks anyway). Curated lists are never replaced
unless ``replace_curated=True``. Classes are asked concurrently (``max_concurrency``), each
finished class is written to the store at once (an interrupted run keeps its progress), and the
whole run holds the store's lock, so a second process waits and then finds the answers cached.

After the requests all lists are filtered again (cheap, no requests) whenever the proposals, the
filter settings or the text embedder changed. Settings stick: ``filter_config=None`` reuses the
store's, and ``embed=None`` keeps an earlier embedding-based filtering while its inputs stand.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import logging
import os
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cbm.concepts.filtering import FilterConfig, filter_concepts
from cbm.concepts.llm import (
    AnswerError,
    ConceptLLM,
    LLMConfig,
    LLMError,
    NotSent,
    list_llm_presets,
    load_llm_config,
)
from cbm.concepts.prompts import (
    DEFAULT_PROMPT_VERSION,
    PROMPTS,
    InvalidAnswer,
    prompt_phrases,
    render_messages,
    shorten,
)
from cbm.concepts.store import (
    CardInfo,
    ConceptSet,
    _now,
    card_info,
    card_reference,
    concept_set_from_store,
    new_store,
    read_store,
    store_lock,
    write_store,
)
from cbm.utils import stable_hash

__all__ = ["generate_concepts", "check_llm_server", "ConceptGenerationError", "request_key", "embedder_from"]

log = logging.getLogger(__name__)


class ConceptGenerationError(RuntimeError):
    """Some classes got no usable answer; the others were saved, and a re-run asks only for the missing."""

    def __init__(self, message: str, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = failures  # class -> why


def request_key(
    messages: list[dict[str, str]], config: LLMConfig, prompt_version: str, served_model: str | None = None
) -> str:
    """Content key of one class's request: what, if unchanged, makes the stored answer reusable.

    ``served_model`` is the model the server says it serves (``GET /models``): another gguf behind
    the same preset is another key. The server's address, time-outs and retry settings are left
    out (they do not change the answer).
    """
    key: dict[str, Any] = {
        "prompt_version": prompt_version,
        "messages": messages,
        "model": config.model,
        "temperature": config.temperature,
        "seed": config.seed,
    }
    if served_model is not None:  # servers that do not list their models keep the keys they had
        key["served_model"] = served_model
    return stable_hash(key)


def embedder_from(embed: Any, embed_id: str | None = None) -> tuple[Callable[[list[str]], np.ndarray] | None, str | None]:
    """``(function, id)`` from a text embedder: a callable, or an encoder with ``encode_text``.

    The id names the embedder in the store (an encoder's ``cache_key``, a function's name, or
    ``embed_id``); an anonymous function (a lambda, a closure) gets ``"anonymous"``, and its
    filtering is then redone on every run rather than trusted from the store.
    """
    if embed is None:
        return None, None
    if hasattr(embed, "encode_text"):
        ident = embed_id or getattr(embed, "cache_key", None) or getattr(embed, "name", None) or type(embed).__name__

        def encode(texts: list[str]) -> np.ndarray:
            out = embed.encode_text(texts)
            return out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)

        return encode, str(ident)
    if not callable(embed):
        raise TypeError(f"embed must be a callable texts -> (N, D) array or an encoder with encode_text, got {embed!r}")
    ident = embed_id or getattr(embed, "cache_key", None)
    if ident is None:
        name = f"{getattr(embed, '__module__', '')}.{getattr(embed, '__qualname__', '')}"
        ident = "anonymous" if ("<" in name or name == ".") else name
    return embed, str(ident)


def _needs_request(entry: dict | None, key: str, refresh: bool, replace_curated: bool) -> bool:
    if entry is None:
        return True
    if entry["source"] == "curated":
        return replace_curated
    return refresh or entry.get("llm", {}).get("request_key") != key


class _DaemonPool:
    """A thread pool whose workers never hold the process open: Ctrl-C ends a run at once.

    ``concurrent.futures.ThreadPoolExecutor`` joins its workers on the way out, so an interrupted
    run would still send every queued request and wait for all of them (minutes with a slow
    server) only to drop their answers. Here queued calls are cancelled and a call in flight is
    left to the daemon thread, which the process does not wait for."""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        self._queue.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
                future.set_exception(exc)

    def close(self) -> None:
        """Let the workers end once the queue is done (cancel the futures first to drop it)."""
        for _ in self._threads:
            self._queue.put(None)


def _ask_all(
    llm: ConceptLLM,
    todo: dict[str, list[dict[str, str]]],
    on_answer: Callable[[str, Any], None],
    progress: bool,
    on_reject: Callable[[str, AnswerError], None] | None = None,
    check: Callable[[str], Callable[[list[str]], None]] | None = None,
) -> dict[str, str]:
    """Ask for every class in ``todo`` with bounded concurrency; returns class -> failure reason.

    ``on_answer(name, answer)`` takes each usable answer (and may refuse it with ``AnswerError``);
    ``on_reject(name, error)`` hears of each answer that could not be used; ``check(name)`` is the
    class's answer check (:meth:`ConceptLLM.ask`)."""
    failures: dict[str, str] = {}
    fatal: LLMError | None = None
    pool = _DaemonPool(min(llm.config.max_concurrency, len(todo)), "cbm-llm")
    futures = {pool.submit(llm.ask, messages, name, check(name) if check else None): name
               for name, messages in todo.items()}
    try:
        with tqdm(total=len(todo), desc="concepts", unit="class", disable=not progress) as bar:
            for future in cf.as_completed(futures):
                name = futures[future]
                bar.update(1)
                if future.cancelled():
                    continue
                try:
                    on_answer(name, future.result())
                except AnswerError as exc:
                    failures[name] = str(exc)
                    log.error("class %r: %s", name, exc)
                    if exc.raw:
                        log.debug("class %r raw answer: %s", name, exc.raw)
                    if on_reject is not None:
                        on_reject(name, exc)
                except NotSent:
                    failures[name] = "not asked: the run stopped after a server error"
                except LLMError as exc:
                    failures[name] = str(exc)
                    if fatal is None:
                        fatal = exc
                        for other in futures:
                            other.cancel()  # those not started yet; running ones finish
    except BaseException:  # Ctrl-C (or a callback's own failure): nothing more is sent, nothing waited for
        llm.stop("the run was interrupted")
        for future in futures:
            future.cancel()
        raise
    finally:
        pool.close()
    for future, name in futures.items():
        if future.cancelled():
            failures[name] = "not asked: the run stopped after a server error"
    if fatal is not None:
        raise fatal
    return failures


def _offered(modality: str, versions: Any) -> dict[str, str]:
    """What the prompts of ``versions`` offered the LLM (placeholders, examples); unknown versions add nothing."""
    phrases: dict[str, str] = {}
    for version in sorted({v for v in versions if v in PROMPTS}):
        phrases.update(prompt_phrases(modality, version))
    return phrases


def _filter_settings(doc: dict, filter_config: FilterConfig | Mapping[str, Any] | None) -> FilterConfig:
    """The filter settings of this run: the store's, with ``filter_config``'s overrides (a mapping) or
    in their place (a FilterConfig); the defaults where neither says."""
    stored = doc.get("filter") or {}
    stored_config = FilterConfig.from_dict(stored["config"]) if stored.get("config") else None
    if isinstance(filter_config, Mapping):  # overrides of the stored (or default) settings
        return (stored_config or FilterConfig()).updated(filter_config)
    return filter_config or stored_config or FilterConfig()


def _refilter(
    doc: dict,
    classes: list[str],
    embed: Callable[[list[str]], np.ndarray] | None,
    embed_id: str | None,
    filter_config: FilterConfig | Mapping[str, Any] | None,
    modality: str,
) -> set[str]:
    """Filter the LLM lists again if their inputs, the settings or the embedder changed; returns the
    classes it warned were left with no concept."""
    by_class = doc["by_class"]
    proposals = {c: by_class[c]["proposed"] for c in classes if c in by_class and by_class[c]["source"] == "llm"}
    curated = {c: by_class[c]["concepts"] for c in classes if c in by_class and by_class[c]["source"] == "curated"}
    offered = _offered(modality, (by_class[c].get("llm", {}).get("prompt_version") for c in proposals))
    stored = doc.get("filter") or {}
    stored_config = FilterConfig.from_dict(stored["config"]) if stored.get("config") else None
    config = _filter_settings(doc, filter_config)
    inputs = stable_hash({"classes": classes, "proposals": proposals, "curated": curated, "offered": offered})
    if embed is None and stored.get("embedder"):
        if stored.get("inputs") == inputs and config == stored_config:
            return set()  # an embedding-based filtering that still applies: keep it
        log.warning(
            "refiltering without a text embedder (string rules only); the earlier filtering by %s is not "
            "redone: pass the encoder (--encoder) to filter with it again",
            stored["embedder"],
        )
        embed_id = None
    key = stable_hash({"inputs": inputs, "config": config.to_dict(), "embedder": embed_id})
    if not proposals or (stored.get("key") == key and embed_id != "anonymous"):
        return set()
    results = filter_concepts(proposals, classes, curated=curated, embed=embed, config=config, prompt_phrases=offered,
                              warn_emptied=False)  # warned of below, with what to do
    warned = set()
    for name in proposals:
        by_class[name]["concepts"] = results[name].kept
        by_class[name]["removed"] = results[name].removed
        if proposals[name] and not results[name].kept:  # the answer stays under "proposed": nothing is lost
            log.warning("class %r: the filter removed all %d proposed concepts (%s), so a run gives the class no concept; "
                        "`cbm concepts CARD --removed` shows why, and a run with other filter settings brings them back",
                        name, len(proposals[name]), ", ".join(sorted({r["rule"] for r in results[name].removed})))
            warned.add(name)
    doc["filter"] = {"config": config.to_dict(), "embedder": embed_id, "key": key, "inputs": inputs}
    return warned


def _plan(
    info: CardInfo, by_class: dict, config: LLMConfig, served: str | None, n_concepts: int, prompt_version: str,
    refresh: bool, replace_curated: bool,
) -> tuple[dict[str, list[dict[str, str]]], dict[str, str]]:
    """``(todo, keys)``: the messages of each class to ask, and the request key of every class with a server."""
    todo: dict[str, list[dict[str, str]]] = {}
    keys: dict[str, str] = {}
    for name in info.class_names:
        entry = by_class.get(name)
        if not config.has_server:
            if entry is None:
                todo[name] = []
            continue
        messages = render_messages(info.modality, list(info.classes), name, n_concepts=n_concepts,
                                   version=prompt_version)
        keys[name] = request_key(messages, config, prompt_version, served)
        if _needs_request(entry, keys[name], refresh, replace_curated):
            todo[name] = messages
        elif entry["source"] == "curated" and refresh:
            log.info("class %r: curated list kept (replace_curated=True to ask the LLM instead)", name)
    return todo, keys


def _nothing_left(proposed: int, removed: list[dict[str, str]]) -> str:
    """Why an answer is unusable when the filter removed every phrase (said to the LLM, then to the user)."""
    shown = "; ".join(f"{shorten(r['concept'], 40)!r}: {r['reason']}" for r in removed[:4])
    more = f"; and {len(removed) - 4} more" if len(removed) > 4 else ""
    return f"every one of the {proposed} proposed phrases was filtered out ({shown}{more})"


def _generated_entry(
    answer: Any, config: LLMConfig, served: str | None, prompt_version: str, n_concepts: int, key: str
) -> dict:
    """A class's store entry for a usable answer, with its provenance (``concepts``/``removed`` filled later)."""
    return {
        "source": "llm",
        "concepts": [],
        "removed": [],
        "proposed": answer.concepts,
        "llm": {
            "prompt_version": prompt_version,
            "model": config.model,
            "served_model": served,
            "response_model": answer.response_model,
            "server_host": config.server_host,
            "temperature": config.temperature,
            "seed": config.seed,
            "n_concepts": n_concepts,
            "structured_output": answer.structured_output,
            "date": _now(),
            "request_key": key,
            "attempts": answer.attempts,
            "finish_reason": answer.finish_reason,
            "usage": answer.usage,
            "raw_response": answer.raw,
        },
    }


def check_llm_server(card: Any, llm_config: Any) -> None:
    """Refuse what :func:`generate_concepts` would refuse of its LLM before it asks anything: an API key
    that is not set, a server that cannot be reached or refuses the key (asked which model it serves,
    as generation asks first). Nothing is asked where every class's list is curated (no LLM is)."""
    info, config = card_info(card), load_llm_config(llm_config)
    by_class = (read_store(info.store_path) or {}).get("by_class", {})
    if config.has_server and not _curated_only(by_class, info.class_names):
        ConceptLLM(config).served_model()


def _curated_only(by_class: Mapping[str, Any], classes: list[str], replace_curated: bool = False) -> bool:
    """Whether every class's list in the store is curated (and kept): then no LLM is asked."""
    return all(by_class.get(c, {}).get("source") == "curated" for c in classes) and not replace_curated


def generate_concepts(
    card: Any,
    llm_config: LLMConfig | str | os.PathLike | dict | None = None,
    *,
    refresh: bool = False,
    embed: Any = None,
    embed_id: str | None = None,
    filter_config: FilterConfig | Mapping[str, Any] | None = None,
    n_concepts: int = 20,
    prompt_version: str = DEFAULT_PROMPT_VERSION,
    replace_curated: bool = False,
    store_path: str | os.PathLike | None = None,
    client: Any = None,
    progress: bool = True,
) -> ConceptSet:
    """The concepts of a card: from its store, asking the LLM only for what is missing or changed.

    Long on purpose: one lock spans reading, asking and writing the store, and the callbacks
    share the open document.

    Args:
        card: a ``cbm.data.DataCard``, a card name, or a card folder / ``card.yaml`` path.
        llm_config: an :class:`LLMConfig`, a preset name (``"vllm"``), a YAML path or a mapping;
            ``None`` (or the ``none`` preset) = no server: only the store is used.
        refresh: ask again even where the store has an answer for the same request.
        embed: text embedder for the filter: ``texts -> (N, D)`` L2-normalised array, or an encoder
            with ``encode_text`` (e.g. ``cbm.encoders.create_encoder(name)``); ``None`` = string
            rules, or the store's earlier embedding-based filtering while it still applies.
        embed_id: the embedder's name in the store (e.g. the encoder's cache key), when ``embed``
            is a plain function; an unnamed function's filtering is redone every run.
        filter_config: filter settings; a mapping changes only the keys it names; ``None`` = the
            store's settings (the defaults for a new store).
        n_concepts: how many concepts to ask for per class.
        prompt_version: the prompt template (``cbm.concepts.prompts.PROMPTS``).
        replace_curated: ask for curated classes too and replace their lists.
        store_path: write here instead of ``concepts.json`` beside the card.
        client: an ``openai.OpenAI`` client to use instead of one built from ``llm_config``.
        progress: show a progress bar while asking.

    Raises:
        RuntimeError: classes lack a list and there is no server to ask.
        cbm.concepts.LLMError: the server cannot be used (bad key, unknown model, down).
        ConceptGenerationError: some classes got no usable answer (the rest is saved).
    """
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, int) or n_concepts < 1:
        raise ValueError(f"n_concepts (--n-concepts) is how many concepts to ask for per class: 1 or more, got "
                         f"{n_concepts!r}")
    info: CardInfo = card_info(card)
    config = load_llm_config(llm_config)
    path = Path(store_path) if store_path is not None else info.store_path
    classes = info.class_names
    embed_fn, embed_id = embedder_from(embed, embed_id)

    with store_lock(path):
        doc = read_store(path) or new_store(info)
        before = copy.deepcopy(doc)
        doc.update(card=info.name, modality=info.modality, classes=classes)
        by_class = doc["by_class"]
        curated_only = _curated_only(by_class, classes, replace_curated)
        llm = ConceptLLM(config, client=client) if config.has_server and not curated_only else None
        served = llm.served_model() if llm is not None else None
        todo, keys = _plan(info, by_class, config, served, n_concepts, prompt_version, refresh, replace_curated)
        if todo and llm is None:
            raise RuntimeError(
                f"card {info.name!r} has no concept list for classes {list(todo)} in {str(path)!r}, and no LLM "
                f"server to ask: pass an LLM preset ({', '.join(p for p in list_llm_presets() if p != 'none')}) "
                "or a YAML file, e.g. `cbm concepts "
                f"{card_reference(info)} --llm vllm`, or write the lists by hand (cbm.concepts.save_curated)"
            )
        failures: dict[str, str] = {}
        if todo:
            asked = config.model if not served or served == config.model else f"{config.model} (served as {served})"
            log.info("asking %s at %s for the concepts of %d of %d classes", asked, config.server_host, len(todo), len(classes))
            offered = prompt_phrases(info.modality, prompt_version)
            settings = _filter_settings(doc, filter_config)  # the check keeps what the final filtering keeps

            def check(name: str) -> Callable[[list[str]], None]:
                def check_answer(concepts: list[str]) -> None:  # nothing usable: asked again, saying why
                    result = filter_concepts({name: concepts}, classes, prompt_phrases=offered, config=settings,
                                             warn_emptied=False)[name]  # asked again, saying why
                    if not result.kept:
                        raise InvalidAnswer(_nothing_left(len(concepts), result.removed))

                return check_answer

            def on_answer(name: str, answer: Any) -> None:
                # a first, string-only filtering so the file is usable even if the run stops here
                kept = filter_concepts({name: answer.concepts}, classes, prompt_phrases=offered, config=settings,
                                       warn_emptied=False)[name]
                by_class[name] = _generated_entry(answer, config, served, prompt_version, n_concepts, keys[name])
                by_class[name]["concepts"], by_class[name]["removed"] = kept.kept, kept.removed
                doc.get("rejected", {}).pop(name, None)
                if not doc.get("rejected"):
                    doc.pop("rejected", None)
                doc["updated"] = _now()
                if doc.get("filter"):  # its settings stay; the full filtering runs again at the end
                    doc["filter"].update(key=None, inputs=None)
                write_store(path, doc)

            def on_reject(name: str, exc: AnswerError) -> None:  # the answer's text is kept, to see what went wrong
                doc.setdefault("rejected", {})[name] = {"reason": str(exc), "raw_response": exc.raw,
                                                        "model": config.model, "served_model": served, "date": _now()}

            try:
                failures = _ask_all(llm, todo, on_answer, progress, on_reject, check)
            except LLMError:
                if doc != before:
                    _refilter(doc, classes, embed_fn, embed_id, filter_config, info.modality)
                    write_store(path, doc)
                raise
        else:
            log.info("all %d classes of card %r come from the store %s; no request sent", len(classes), info.name, path)

        emptied = _refilter(doc, classes, embed_fn, embed_id, filter_config, info.modality)
        if doc != before:
            doc["updated"] = _now()
            write_store(path, doc)

    if failures:
        lines = "\n".join(f"  - {name}: {why}" for name, why in failures.items())
        saved = [c for c in classes if c not in failures and c in doc["by_class"]]
        where = (f"The other classes' lists ({len(saved)}) are in {path}; run again to ask only for the missing ones."
                 if saved and path.is_file() else "No list was saved; fix the cause and run again.")
        kept = [c for c in failures if c in doc["by_class"]]
        if kept and path.is_file():  # a --refresh or --replace-curated run: the earlier lists stand
            where += f" The lists stored before for {shorten(kept, 120)} are kept, unchanged, in {path}."
        raise ConceptGenerationError(
            f"{len(failures)} of {len(classes)} classes of card {info.name!r} got no usable answer:\n{lines}\n{where}",
            failures,
        )
    return concept_set_from_store(doc, classes, path, card=info, warned=emptied)
