"""The bookkeeping files of `alexatm-data prepare` and how they become the manifest (no TF).

    plan.json                          what is prepared: mixture, settings, units, splits,
                                       workers, files skipped while scanning DATA_DIR
    <unit>/<split>/done.json           one finished unit/split (one worker: `done-I-of-N.json`):
                                       its parts, counters, bad files and the digest of the
                                       inputs it was built from (settings + source files)

A unit/split whose done record carries the digest of the current inputs is complete and is not
prepared again; the manifest (alexatm_jax/data/prepared_format.py) is merged from the done
records of every planned unit, split and worker, so it can be written by another process (the
finalize step of a distributed run).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from alexatm_jax import storage
from alexatm_jax.data.prepared_format import (
    FORMAT_VERSION,
    MANIFEST,
    write_manifest,
)
from tasks import counters as names

PLAN = "plan.json"
# Counted per file read, not per document: both splits read every line of a file, so a unit's
# count is the largest of its splits' (the others saw the same records).
_PER_FILE_COUNTERS = (names.INVALID_JSON,)


def done_path(unit: str, split: str, worker: int, num_workers: int) -> str:
    """The done record of one unit/split (and worker), relative to the prepared directory."""
    name = "done.json" if num_workers == 1 else f"done-{worker:05d}-of-{num_workers:05d}.json"
    return f"{unit}/{split}/{name}"


def write_json(path: storage.epath.Path, value: Mapping[str, Any]) -> None:
    """Write `value` as JSON to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(dict(value), indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def read_json(path: storage.epath.Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when there is no such file."""
    return json.loads(path.read_text()) if path.exists() else None


def settings_difference(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """`field: saved X, now Y` for every field that differs, joined with `; `."""
    fields = sorted(set(saved) | set(now))
    return "; ".join(
        f"{field}: saved {saved.get(field)!r}, now {now.get(field)!r}"
        for field in fields
        if saved.get(field) != now.get(field)
    )


def merge_manifest(
    plan: Mapping[str, Any],
    records: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
    *,
    vocabulary: Mapping[str, Any],
    created: str,
) -> dict[str, Any]:
    """The manifest of a plan from its done records, {(unit, split): [worker 0's, ...]}.

    Parts are listed worker by worker, each worker's in its file order. Counters: per-document
    counters are summed; per-file counters (invalid jsonl lines) are summed over workers, taking
    each worker's largest split; `bad_files` counts the files named in `bad_files`.
    """
    units: dict[str, Any] = {}
    counters = {name: 0 for name in (names.DOCUMENTS, *names.PROBLEMS)}
    per_file: dict[tuple[str, int], dict[str, int]] = {}
    bad_files = dict(plan["skipped_files"])
    sources: dict[str, dict[str, Any]] = {}
    for (unit, split), workers in sorted(records.items()):
        parts = [part for record in workers for part in record["parts"]]
        entry = units.setdefault(unit, {**plan["units"][unit], "splits": {}})
        entry["splits"][split] = {
            "parts": parts,
            "documents": sum(part["documents"] for part in parts),
            "tokens": sum(part["tokens"] for part in parts),
        }
        for worker, record in enumerate(workers):
            bad_files.update(record["bad_files"])
            sources.update({source["path"]: source for source in record["inputs"]["sources"]})
            for name, value in record["counters"].items():
                if name in _PER_FILE_COUNTERS:
                    seen = per_file.setdefault((unit, worker), {})
                    seen[name] = max(seen.get(name, 0), value)
                elif name != names.BAD_FILES:
                    counters[name] += value
    for seen in per_file.values():
        for name, value in seen.items():
            counters[name] += value
    counters[names.BAD_FILES] = len(bad_files)
    return {
        "format": FORMAT_VERSION,
        "mixture": plan["mixture"],
        "preparation": plan["preparation"],
        "preparation_digest": plan["preparation_digest"],
        "vocabulary": dict(vocabulary),
        "sources": [sources[path] for path in sorted(sources)],
        "units": units,
        "counters": counters,
        "bad_files": bad_files,
        "created": created,
    }


def collect_done(root: storage.epath.Path, plan: Mapping[str, Any]) -> dict:
    """{(unit, split): [done record of each worker]} of a plan; ValueError naming what is
    unfinished (and how to finish it) when a record is missing or from other settings."""
    workers = plan["num_workers"]
    records, missing = {}, []
    for unit in plan["units"]:
        for split in plan["splits"]:
            found = [read_json(root / done_path(unit, split, w, workers)) for w in range(workers)]
            lacking = [
                w
                for w, record in enumerate(found)
                if record is None
                or record["inputs"]["preparation_digest"] != plan["preparation_digest"]
            ]
            if lacking:
                which = "" if workers == 1 else f" (worker {', '.join(map(str, lacking))})"
                missing.append(f"{unit}/{split}{which}")
            records[unit, split] = found
    if missing:
        how = (
            "run `alexatm-data prepare` again with the same arguments (it resumes)"
            if workers == 1
            else f"run `alexatm-data prepare --num_workers {workers} --worker_index I` for "
            "those workers, then `--finalize` again"
        )
        raise ValueError(
            f"{root} is not completely prepared: {', '.join(missing)} unfinished; {how}"
        )
    return records


def write_manifest_if_changed(root: storage.epath.Path, manifest: Mapping[str, Any]) -> bool:
    """Write the manifest unless the one there equals it but for its creation time (so a
    re-run that changes nothing rewrites nothing); True when written."""
    old = read_json(root / MANIFEST)
    if old is not None and {**old, "created": None} == {**manifest, "created": None}:
        return False
    write_manifest(str(root), manifest)
    return True
