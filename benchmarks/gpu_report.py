"""The GPU check's Markdown summary (standard library only)."""

from __future__ import annotations


def _cell(entry: dict | None, key: str, digits: int = 1) -> str:
    if not entry:
        return "-"
    if "skipped" in entry or "error" in entry:
        return "skipped" if "skipped" in entry else "error"
    value = entry.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def _header(results: dict) -> list[str]:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    settings = results["settings"]
    lines = [
        f"# GPU check, {results['started_at']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Device: **{results['device']}**. Machine: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB; Python {m['python']}; {versions}.",
        "",
        f"Took {results.get('elapsed_s', '-')} s of a {settings['budget_s']} s budget"
        + (" (quick: smoke-run budgets, not figures)." if settings["quick"] else "."),
        "",
    ]
    if results["errors"]:
        lines += ["Errors:", "", *[f"- {e}" for e in results["errors"]], ""]
    return lines


def _ceiling(results: dict) -> list[str]:
    settings = results["settings"]
    on_gpu = results["device"] != "cpu"
    tf32 = "on" if settings["cudnn_allow_tf32"] else "off"
    lines = [
        "## Ceiling by batch size",
        "",
        "In-process, random weights, channels_last, eval mode. Forward: inputs already on the "
        "device. End to end: PIL decode + timm eval transform on "
        f"{settings['threads']} CPU threads, "
        + ("pinned host-to-device copy, forward. " if on_gpu else "forward. ")
        + f"Synchronized; warm-up per shape of at least 2 calls and {settings['warmup_s']} s, "
        f"then {settings['measure_s']} s measured per point; ms is the p50 per batch."
        + (f" fp32 uses torch's defaults (cuDNN TF32 {tf32})." if on_gpu else ""),
        "",
    ]
    for model in results["ceiling"]:
        size = "x".join(str(v) for v in model["input_size"])
        lines += [
            f"### {model['architecture']} ({size}, {model['params_m']} M parameters)",
            "",
            "| dtype | batch | forward img/s | forward ms | end-to-end img/s | end-to-end ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for p in model["points"]:
            f, e = p.get("forward") or p, p.get("end_to_end") or p
            lines.append(
                f"| {p['dtype']} | {p['batch_size']} | {_cell(f, 'images_per_s')} | "
                f"{_cell(f, 'ms_per_batch_p50', 2)} | {_cell(e, 'images_per_s')} | "
                f"{_cell(e, 'ms_per_batch_p50', 2)} |"
            )
        lines.append("")
    return lines


def _decode(results: dict) -> list[str]:
    decode, threads = results["decode"], results["settings"]["threads"]
    lines = [
        f"## JPEG decode, images/s (batches of {decode['batch_size']})",
        "",
        "PIL: decode, convert to RGB, the eval Resize + CenterCrop. nvjpeg: "
        "`torchvision.io.decode_jpeg(list, device='cuda')`, bare and followed by the same "
        "resize and crop on the GPU (plus normalise).",
        "",
        f"| image | mean bytes | PIL, 1 thread | PIL, {threads} threads | nvjpeg "
        "| nvjpeg + GPU resize |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    notes = set()
    for size, row in decode["sizes"].items():
        cells = [_cell(row.get(k), "images_per_s") for k in
                 ("pil_1_thread", "pil_threads", "nvjpeg", "nvjpeg_resize")]  # fmt: skip
        lines.append(f"| {size} | {row['bytes_mean']} | " + " | ".join(cells) + " |")
        notes.update(str(row[k]["skipped"]) for k in ("nvjpeg",) if "skipped" in row.get(k, {}))
    return [*lines, "", *sorted(notes), ""] if notes else [*lines, ""]


def _agreement(results: dict) -> list[str]:
    lines = [
        "## Agreement with fp32",
        "",
        "Each model fine-tuned in-process (whole model, AdamW) on synthetic shapes "
        "(training/synthetic.py, 5 classes, JPEG quality 90), then judged on held-out images "
        "against fp32 on PIL inputs (no TF32). Five confident classes: agreement on ImageNet's "
        "1000 classes with real weights can be lower.",
        "",
        "| model | training | inputs | accuracy | top-1 agreement with fp32 PIL | max abs Δp |",
        "|---|---|---|---:|---:|---:|",
    ]
    notes = []
    for model in results["agreement"]:
        t = model["training"]
        trained = f"{t['steps']} steps, {t['seconds']} s, loss {t['final_loss']}"
        for name, v in model["variants"].items():
            lines.append(
                f"| {model['architecture']} | {trained} | {name} | {v['accuracy']} | "
                f"{v['top1_agreement']} | {v['max_abs_prob_diff']} |"
            )
        if "nvjpeg" in model:
            notes.append(f"{model['architecture']} nvjpeg: {model['nvjpeg']}")
        if photos := model.get("photos_nvjpeg_vs_pil"):
            notes.append(
                f"{model['architecture']} on {photos['images']} photo-like JPEGs, fp32, nvjpeg "
                f"vs PIL inputs: top-1 agreement {photos['top1_agreement']}, pixels differ by "
                f"{photos['pixels']['mean']} on average (max {photos['pixels']['max']})."
            )
        if pixels := model.get("nvjpeg_vs_pil_pixels"):
            notes.append(
                f"{model['architecture']} held-out inputs, nvjpeg vs PIL: pixels differ by "
                f"{pixels['mean']} on average (max {pixels['max']}), 0-255 units."
            )
    return [*lines, "", *[f"- {n}" for n in notes], ""] if notes else [*lines, ""]


def markdown(results: dict) -> str:
    lines = _header(results)
    for key, section in (("ceiling", _ceiling), ("decode", _decode), ("agreement", _agreement)):
        if key in results:
            lines += section(results)
        elif key in results["settings"].get("sections", [key]):
            lines += [f"## {key.capitalize()}", "", "Not measured (see errors).", ""]
    return "\n".join(lines)
