"""A suite's summary: the Flores 12x12 matrix with averages, per-language tables, the SuperGLUE
average, and beside each figure the paper's published one (`paper_figures.json`)."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

from etils import epath

from alexatm_jax.evaluation.harness import markdown_cell
from alexatm_jax.evaluation.translation_tasks import FLORES_LANGUAGES

PAPER_FIGURES = pathlib.Path(__file__).with_name("paper_figures.json")
# The figure each task is summarised by (the paper's metric where it reports one).
MAIN_METRIC = {
    "boolq": "accuracy",
    "cb": "accuracy",
    "copa": "accuracy",
    "multirc": "f1a",
    "record": "f1",
    "rte": "accuracy",
    "wic": "accuracy",
    "wsc": "accuracy",
    "squad_v2": "f1",
    "xsum": "rouge2",
    "mlsum_de": "rouge2",
    "mlsum_es": "rouge2",
    "mlsum_fr": "rouge2",
    "e2e_nlg": "bleu",
    "xnli": "accuracy",
    "xcopa": "accuracy",
    "pawsx": "accuracy",
    "xwinograd": "accuracy",
}
SUPERGLUE = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")


def paper_figures() -> dict[str, Any]:
    """The published figures file (see its `_source`)."""
    return json.loads(PAPER_FIGURES.read_text(encoding="utf-8"))


def _main_metric(task: str) -> str:
    return "bleu" if task.startswith("wmt") else MAIN_METRIC.get(task, "")


def flores_matrix(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """{metric, tokenize, languages, matrix[src][tgt], source_average, target_average} over the
    Flores pairs present (None when there are none). `metric` is `spbleu` only if every pair was
    scored with the Flores SentencePiece model."""
    pairs = {
        k.split(":", 1)[1]: v["metrics"] for k, v in results.items() if k.startswith("flores101:")
    }
    if not pairs:
        return None
    tokenizers = {m.get("bleu_tokenize", "13a") for m in pairs.values()}
    metric = "spbleu" if tokenizers == {"flores101"} else "bleu_13a"
    if len(tokenizers) > 1:
        raise ValueError(
            f"Flores pairs were scored with different BLEU tokenizers {tokenizers}: "
            "rerun them all with the same --spbleu_model setting"
        )
    languages = list(FLORES_LANGUAGES)
    matrix = {
        s: {t: pairs[f"{s}-{t}"][metric] for t in languages if f"{s}-{t}" in pairs}
        for s in languages
    }
    mean = lambda values: sum(values) / len(values) if values else None
    return {
        "metric": metric,
        "tokenize": tokenizers.pop(),
        "languages": languages,
        "matrix": matrix,
        "source_average": {s: mean(list(matrix[s].values())) for s in languages},
        "target_average": {
            t: mean([matrix[s][t] for s in languages if t in matrix[s]]) for t in languages
        },
    }


def summarize(
    suite: str, results: dict[str, dict[str, Any]], skipped: dict[str, str]
) -> dict[str, Any]:
    """summary.json's content for a suite's per-task results."""
    figures = paper_figures()
    tasks = {}
    for task, result in results.items():
        if task.startswith("flores101:"):
            continue
        metric = _main_metric(task)
        paper = figures["figures"].get(task, {}).get(metric)
        tasks[task] = {
            "metric": metric,
            "value": result["metrics"].get(metric),
            "paper": paper,
            "metrics": result["metrics"],
        }
    report: dict[str, Any] = {
        "suite": suite,
        "tasks": tasks,
        "skipped": skipped,
        "flores": flores_matrix(results),
        "notes": figures["notes"],
        "paper_source": figures["_source"],
    }
    glue = [tasks[t]["value"] for t in SUPERGLUE if t in tasks]
    if len(glue) == len(SUPERGLUE):
        report["superglue_average"] = {
            "value": sum(glue) / len(glue),
            "paper": figures["superglue_average"],
        }
    report["per_language"] = {
        task: {
            k[len("accuracy_") :]: v
            for k, v in tasks[task]["metrics"].items()
            if k.startswith("accuracy_") and k != "accuracy_language_mean"
        }
        for task in ("xnli", "xcopa", "pawsx", "xwinograd")
        if task in tasks
    }
    return report


def _number(value: float | None) -> str:
    return (
        "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
    )


def summary_markdown(report: dict[str, Any]) -> str:
    """summary.md: task table with the paper column, per-language tables, the Flores matrix."""
    lines = [
        f"# Suite `{report['suite']}`",
        "",
        "| task | metric | ours | paper |",
        "| --- | --- | --- | --- |",
    ]
    for task, row in report["tasks"].items():
        lines.append(
            f"| {markdown_cell(task)} | {row['metric']} | {_number(row['value'])} | "
            f"{_number(row['paper'])} |"
        )
    if "superglue_average" in report:
        average = report["superglue_average"]
        lines.append(
            f"| SuperGLUE average | | {_number(average['value'])} | {_number(average['paper'])} |"
        )
    for task, per in report["per_language"].items():
        lines += [
            "",
            f"## {task} accuracy per language",
            "",
            "| " + " | ".join(per) + " |",
            "|" + " --- |" * len(per),
            "| " + " | ".join(_number(v) for v in per.values()) + " |",
        ]
    flores = report["flores"]
    if flores:
        languages = flores["languages"]
        lines += [
            "",
            f"## Flores-101 devtest {flores['metric']} (rows: source, columns: target; "
            f"tokenize={flores['tokenize']})",
            "",
            "| src \\ tgt | " + " | ".join(languages) + " | average |",
            "|" + " --- |" * (len(languages) + 2),
        ]
        for s in languages:
            cells = [_number(flores["matrix"][s].get(t)) for t in languages]
            lines.append(
                f"| {s} | " + " | ".join(cells) + f" | {_number(flores['source_average'][s])} |"
            )
        lines.append(
            "| average | "
            + " | ".join(_number(flores["target_average"][t]) for t in languages)
            + " | |"
        )
    if report["skipped"]:
        lines += ["", "## Skipped (no data on this machine)", ""]
        lines += [
            f"- {task}: {markdown_cell(reason)}" for task, reason in report["skipped"].items()
        ]
    lines += ["", "Paper figures: " + report["paper_source"]]
    lines += [f"- {key}: {note}" for key, note in report["notes"].items()]
    return "\n".join(lines) + "\n"


def write_heatmap(flores: dict[str, Any], path: epath.Path) -> None:
    """A 12x12 heatmap PNG of the Flores matrix, each cell annotated (empty: not evaluated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    languages = flores["languages"]
    values = np.array(
        [[flores["matrix"][s].get(t, np.nan) for t in languages] for s in languages], dtype=float
    )
    figure, axes = plt.subplots(figsize=(9, 8))
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis")
    axes.set_xticks(range(len(languages)), languages)
    axes.set_yticks(range(len(languages)), languages)
    axes.set_xlabel("target")
    axes.set_ylabel("source")
    axes.set_title(f"Flores-101 devtest {flores['metric']} (tokenize={flores['tokenize']})")
    for i in range(len(languages)):
        for j in range(len(languages)):
            if not np.isnan(values[i, j]):
                axes.text(
                    j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7, color="white"
                )
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    with path.open("wb") as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


def write_summary(report: dict[str, Any], out: epath.Path) -> dict[str, epath.Path]:
    """Writes summary.json, summary.md and (with Flores results) flores_spbleu.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary.json": out / "summary.json", "summary.md": out / "summary.md"}
    paths["summary.json"].write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    paths["summary.md"].write_text(summary_markdown(report), encoding="utf-8")
    if report["flores"]:
        paths["flores_spbleu.png"] = out / "flores_spbleu.png"
        write_heatmap(report["flores"], paths["flores_spbleu.png"])
    return paths
