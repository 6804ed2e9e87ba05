"""Rows -> metrics.json and metrics.md in the paper's table layouts.

Numbers are percent, except ``n`` and ``truncated`` (counts). ``truncated`` counts generate-mode answers that
used the whole budget (``max_new_tokens``) without EOS: their diagnosis may be cut off, so it sits beside Acc.
It is ``None`` in teacher mode, which generates nothing. Per subset and overall, the keys of
:data:`sim4seg.evaluation.clinical.CLINICAL_KEYS` (negatives, positives-only scores, region diagnostics; None
where undefined) sit beside them; a record with several targets adds one gIoU/cIoU entry per scored pair.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sim4seg.evaluation.clinical import CAPTION, CLINICAL_KEYS, clinical_scores, pair_rows
from sim4seg.jsonl import atomic_write_json, atomic_write_text
from sim4seg.metrics import SegmentationMeter

ORACLE_NOTE = "(oracle: uses ground truth)"
FLAGS = ("no_seg", "multi_seg", "truncated")


def _score(rs: list[dict], generate: bool, key=None) -> dict:
    meter = SegmentationMeter()
    pick = (lambda r: r) if key is None else key
    meter.add(*pair_rows([pick(r) for r in rs]))
    res = {k: 100 * v for k, v in meter.result().items()}
    if generate:
        res["Acc"] = 100 * sum(bool(pick(r)["correct"]) for r in rs) / len(rs)
    return {**res, "n": len(rs)}


def _truncated(rs: list[dict], generate: bool) -> int | None:
    return sum("truncated" in r.get("flags", []) for r in rs) if generate else None


def aggregate(rows: list[dict], vocab: dict, mode: str, cfg: DictConfig, max_new_tokens: int | None) -> dict:
    """metrics.json: per subset, Avg. (mean over subsets) and overall (pooled), in percent."""
    ok = [r for r in rows if "error" not in r]
    gen = mode == "generate"
    subsets = sorted({r["subset"] for r in ok}, key=lambda s: list(vocab).index(s) if s in vocab else 10**6)
    per = {}
    for s in subsets:
        rs = [r for r in ok if r["subset"] == s]
        per[s] = {**_score(rs, gen), "truncated": _truncated(rs, gen), **clinical_scores(rs)}
    keys = [k for k in ("gIoU", "cIoU", "Dice", "Acc") if per and k in next(iter(per.values()))]
    result = {"mode": mode, "split": cfg.split, "n_samples": len(ok), "n_errors": len(rows) - len(ok),
              "max_new_tokens": max_new_tokens,
              "flags": {f: sum(f in r.get("flags", []) for r in ok) for f in FLAGS},
              "subsets": per, "avg": {k: sum(per[s][k] for s in per) / len(per) for k in keys} if per else {},
              "overall": {**_score(ok, gen), "truncated": _truncated(ok, gen), **clinical_scores(ok)} if ok else {},
              "selection": {"mask": cfg.tts.select_mask, "diagnosis": cfg.tts.select_diagnosis}}
    tts_keys = sorted({k for r in ok for k in r.get("tts", {})}, key=lambda k: tuple(int(x[2:]) for x in k.split(",")))
    if tts_keys:
        result["tts"] = {k: {"selected": _score(ok, gen, lambda r, k=k: r["tts"][k]),
                             "oracle": _score(ok, gen, lambda r, k=k: r["tts"][k]["oracle"])} for k in tts_keys}
    return result


def _f(x) -> str:
    if x is None:
        return "-"
    return str(x) if isinstance(x, int) else f"{x:.2f}"


def table3(result: dict, vocab: dict) -> str:
    """Per-subset layout of the paper's Table 3: metrics as rows, subsets as columns, Avg. = mean over subsets;
    generate mode adds the truncated answers (a count; the last column is their total)."""
    per = result["subsets"]
    cols = list(per)
    keys = [k for k in ("gIoU", "cIoU", "Dice", "Acc") if k in result.get("avg", {})]
    head = "| Metric | " + " | ".join(vocab[c].short if c in vocab else c for c in cols) + " | Avg. |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_f(per[c][k]) for c in cols) + f" | {_f(result['avg'][k])} |")
    if result["mode"] == "generate" and per:
        lines.append("| Truncated | " + " | ".join(_f(per[c]["truncated"]) for c in cols) +
                     f" | {_f(result['overall']['truncated'])} |")
    lines.append("| n | " + " | ".join(str(per[c]["n"]) for c in cols) + f" | {result['n_samples']} |")
    return "\n".join(lines)


def table2(result: dict, name: str = "this run") -> str:
    """The paper's Table 2 row: pooled over all samples (and the truncated answers beside Acc)."""
    o = result["overall"]
    return "\n".join(["| Method | gIoU | cIoU | Acc | Truncated |", "|---|---|---|---|---|",
                      f"| {name} | {_f(o.get('gIoU'))} | {_f(o.get('cIoU'))} | {_f(o.get('Acc'))} | "
                      f"{_f(o.get('truncated'))} |"])


def clinical_table(result: dict, vocab: dict) -> str:
    """Negatives, positives-only scores and region diagnostics per subset and overall (caption: CAPTION)."""
    per = result["subsets"]
    cols = list(per)
    lines = ["| Metric | " + " | ".join(vocab[c].short if c in vocab else c for c in cols) + " | Overall |",
             "|---" * (len(cols) + 2) + "|"]
    for k in CLINICAL_KEYS:
        lines.append(f"| {k} | " + " | ".join(_f(per[c].get(k)) for c in cols) + f" | {_f(result['overall'].get(k))} |")
    return "\n".join(lines)


def tts_table(result: dict) -> str:
    sel = result["selection"]
    head = (f"| m, n | gIoU ({sel['mask']}) | cIoU ({sel['mask']}) | Acc ({sel['diagnosis']}) | "
            f"gIoU {ORACLE_NOTE} | cIoU {ORACLE_NOTE} | Acc {ORACLE_NOTE} |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for k, v in result["tts"].items():
        s, o = v["selected"], v["oracle"]
        lines.append(f"| {k} | {_f(s['gIoU'])} | {_f(s['cIoU'])} | {_f(s.get('Acc'))} | {_f(o['gIoU'])} | "
                     f"{_f(o['cIoU'])} | {_f(o.get('Acc'))} |")
    return "\n".join(lines)


def write_reports(out: Path, result: dict, vocab: dict) -> None:
    atomic_write_json(out / "metrics.json", result)
    sel = result["selection"]
    md = [f"# Evaluation: {result['mode']} on split {result['split']}", "",
          f"{result['n_samples']} samples scored, {result['n_errors']} left out (errors); flags: {result['flags']}. "
          "All numbers in percent, except n and Truncated (counts).", ""]
    if result["mode"] == "generate":
        md += [f"Selection: mask `{sel['mask']}`{' ' + ORACLE_NOTE if sel['mask'] == 'oracle' else ''}, "
               f"diagnosis `{sel['diagnosis']}`{' ' + ORACLE_NOTE if sel['diagnosis'] == 'oracle' else ''}. "
               f"Generation budget: max_new_tokens={result['max_new_tokens']}; Truncated: answers that used it all "
               "without EOS.", ""]
    md += ["## Per subset (Table 3 layout)", "", table3(result, vocab), "", "## Overall (Table 2 layout)", "",
           table2(result), ""]
    if result["overall"]:
        md += ["## No finding, several findings, region diagnostics", "", clinical_table(result, vocab), "",
               CAPTION, ""]
    if "tts" in result:
        md += ["## Test-time scaling", "", tts_table(result), ""]
    atomic_write_text(out / "metrics.md", "\n".join(md))
