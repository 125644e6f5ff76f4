"""Fuzz campaign on concept stores: mutate the shipped ``concepts.json`` files (and two stores as an
LLM run writes them) and count how each mutant fares. Prints one JSON object: counts per outcome
(accepted / clear_error / unclear_error), per mutation, and up to ``--show`` unclear cases to fix.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/fuzz_concepts.py                  # 3,000 mutants, a minute or two
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/fuzz_concepts.py --n 20000 --seed 7

An unclear_error (another exception than ConceptStoreError, or one without the file or a fix)
is a bug; the exit status is 1 when there is one. The same check, smaller, runs in
tests/test_fuzz_concepts.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from cbm.concepts.fuzz import generated_store, mutate, try_store
from cbm.concepts.store import card_info
from cbm.data import list_cards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="mutants to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=10, help="unclear cases to print")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the loaders' warnings and errors about odd stores are expected here

    rng = random.Random(args.seed)
    outcomes: Counter = Counter()
    by_mutation: dict[str, Counter] = defaultdict(Counter)
    unclear: list[dict] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cbm-fuzz-") as tmp:
        folder = Path(tmp)
        corpus = [(info, info.store_path.read_bytes()) for info in map(card_info, list_cards())]
        for name in ("ham10000", "nih-cxr14"):
            (folder / name).mkdir()
            corpus.append((card_info(name), generated_store(card_info(name), folder / name)))
        for i in range(args.n):
            info, original = rng.choice(corpus)
            kind, data = mutate(original, rng)
            path = folder / f"mutant-{i % 50}.json"
            path.write_bytes(data)
            outcome, detail = try_store(info, path)
            outcomes[outcome] += 1
            by_mutation[kind][outcome] += 1
            if outcome == "unclear_error" and len(unclear) < args.show:
                unclear.append({"card": info.name, "mutation": kind, "error": detail, "mutant": data[:300].decode(
                    "utf-8", errors="replace")})
    report = {
        "mutants": args.n,
        "seed": args.seed,
        "stores": len(corpus),
        "seconds": round(time.perf_counter() - start, 1),
        "outcomes": dict(outcomes),
        "by_mutation": {k: dict(v) for k, v in sorted(by_mutation.items())},
        "unclear": unclear,
    }
    print(json.dumps(report, indent=2))
    return 1 if outcomes["unclear_error"] else 0


if __name__ == "__main__":
    sys.exit(main())
