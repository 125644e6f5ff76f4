"""``cbm concepts CARD [--llm PRESET] [--refresh]``: show a card's concepts, asking an LLM only when told to.

    cbm concepts ham10000                       # the store as it is; no server needed
    cbm concepts ham10000 --llm vllm            # ask for what the store lacks (or what changed)
    cbm concepts ham10000 --llm openai --refresh --replace-curated
    cbm concepts ham10000 --llm vllm --encoder biomedclip --max-per-class 15
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from cbm.concepts.llm import list_llm_presets, load_llm_config

__all__ = ["register", "run_concepts"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add ``concepts`` to the ``cbm`` command."""
    presets = ", ".join(list_llm_presets()) or "none found"
    parser = subparsers.add_parser(
        "concepts",
        help="show or generate a card's clinical concepts (LLM, cached in concepts.json)",
        description=(
            "Show the concepts of a data card's classes from its concept store (concepts.json beside "
            "card.yaml), or ask an OpenAI-compatible LLM server for the classes the store lacks."
        ),
    )
    parser.add_argument("card", help="card name (see `cbm cards`) or card folder / card.yaml path")
    parser.add_argument("--llm", metavar="PRESET", help=f"LLM preset ({presets}) or a YAML file with the same keys")
    parser.add_argument("--model", help="override the preset's model")
    parser.add_argument("--base-url", help="override the preset's base_url")
    parser.add_argument("--refresh", action="store_true", help="ask again even for classes the store has answers for")
    parser.add_argument("--replace-curated", action="store_true", help="ask for curated classes too, replacing them")
    parser.add_argument("--encoder", help="filter near-duplicates and leakage with this encoder's text tower")
    parser.add_argument("--max-per-class", type=int, metavar="N",
                        help="keep at most N concepts per class (kept in the store for later runs; 0 removes the cap)")
    parser.add_argument("--keep-prompt-examples", action=argparse.BooleanOptionalAction, default=None,
                        help="keep proposals that repeat the prompt's own example phrases (removed by default; kept "
                        "in the store for later runs)")
    parser.add_argument("--n-concepts", type=int, default=20, help="concepts to ask for per class (default 20)")
    parser.add_argument("--store", metavar="PATH", help="use this concepts.json instead of the one beside the card")
    parser.add_argument("--removed", action="store_true", help="also list the removed concepts and why")
    parser.set_defaults(func=run_concepts)


def _encoder(name: str) -> Any:
    try:
        from cbm.encoders import create_encoder
    except ImportError as exc:
        raise RuntimeError(f"--encoder {name}: the encoders are not available here ({exc})") from None
    return create_encoder(name)


def run_concepts(args: argparse.Namespace) -> int:
    """Run ``cbm concepts``; prints the store's path, where the lists came from, and the concepts."""
    from cbm.concepts.generate import generate_concepts
    from cbm.concepts.store import load_concepts

    if not getattr(args, "verbose", False):  # one line per HTTP request would bury the progress bar
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.llm is None and (args.refresh or args.replace_curated or args.model or args.base_url):
        raise ValueError("--refresh, --replace-curated, --model and --base-url need --llm PRESET")
    if args.max_per_class is not None and args.max_per_class < 0:
        raise ValueError(f"--max-per-class must be 1 or more, got {args.max_per_class} (0 removes the cap)")
    filtering = args.encoder is not None or args.max_per_class is not None or args.keep_prompt_examples is not None
    if args.llm is None and not filtering:
        concepts = load_concepts(args.card, store_path=args.store)
        print(f"no --llm given: using the concept store {concepts.path} (no request sent)")
    else:
        config = load_llm_config(args.llm).replace(model=args.model, base_url=args.base_url)
        if not config.has_server and (args.refresh or args.replace_curated):
            raise ValueError(f"--refresh and --replace-curated ask a server again, and {config.label} names none: "
                             "give a preset with one (--llm vllm, llamacpp, ollama, openai)")
        changes = {"max_per_class": args.max_per_class, "keep_prompt_examples": args.keep_prompt_examples}
        filter_config = {k: v for k, v in changes.items() if v is not None} or None
        if args.max_per_class == 0:  # the cap sticks in the store: 0 is the way back to none
            filter_config["max_per_class"] = None
        concepts = generate_concepts(
            args.card,
            config,
            refresh=args.refresh,
            embed=_encoder(args.encoder) if args.encoder else None,
            filter_config=filter_config,
            n_concepts=args.n_concepts,
            replace_curated=args.replace_curated,
            store_path=args.store,
        )
        if not config.has_server:
            print(f"no LLM server in {config.label}: using the concept store {concepts.path} (no request sent)")
        else:  # each class's own line says which model wrote its list, and when
            again = "" if (args.refresh or args.replace_curated) else " (classes it already had were not asked again)"
            print(f"concept store {concepts.path}{again}")
        over = [c for c in concepts.classes if concepts.sources.get(c) == "curated"
                and args.max_per_class and len(concepts.by_class[c]) > args.max_per_class]
        if over:
            log.warning("--max-per-class %d caps the lists an LLM wrote; curated lists are kept as written, so %s "
                        "%s more (edit the curated lists to shorten them)", args.max_per_class, ", ".join(map(repr, over)),
                        "keeps" if len(over) == 1 else "keep")
    for name in concepts.classes:
        listed = concepts.by_class[name]
        count = f"{len(listed)} concept" + ("" if len(listed) == 1 else "s")
        print(f"\n{name} ({count}, {concepts.sources.get(name, '?')}):")
        made = (concepts.llm or {}).get(name) if concepts.sources.get(name) == "llm" else None
        if made:
            host = str(made.get("server_host") or "").rpartition("@")[2]  # older stores could hold user:password@
            served = made.get("served_model")
            served = f" [served: {served}]" if served and served != made.get("model") else ""
            print(f"  ({made.get('model')}{served}{f' at {host}' if host else ''}, prompt {made.get('prompt_version')}, "
                  f"{made.get('date')})")
        for phrase in listed:
            print(f"  - {phrase}")
        if args.removed:
            for item in concepts.removed.get(name, []):
                print(f"  x {_short(item['concept'])}  [{item['rule']}: {_short(item['reason'])}]")
    print(f"\n{len(concepts.concepts)} distinct concepts over {len(concepts.classes)} classes")
    return 0


def _short(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for a terminal line (an LLM can propose a page of text)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
