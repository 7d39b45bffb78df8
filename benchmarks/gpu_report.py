"""The GPU check's Markdown summary, and the batch size it recommends (standard library only)."""

from __future__ import annotations

KNEE = 0.95  # the recommended batch reaches this share of the best forward images/s


def recommended_batch_sizes(model: dict, *, fraction: float = KNEE) -> dict[str, dict]:
    """Per dtype, the smallest measured batch whose bare forward reaches ``fraction`` of the
    best forward images/s: larger batches buy little throughput and add queueing latency, so
    this is the CLASSIFIER_MAX_BATCH_SIZE to serve with on that GPU."""
    out: dict[str, dict] = {}
    for dtype in dict.fromkeys(p["dtype"] for p in model["points"]):
        measured = [
            (p["batch_size"], p["forward"]["images_per_s"])
            for p in model["points"]
            if p["dtype"] == dtype and "images_per_s" in (p.get("forward") or {})
        ]
        if not measured:
            continue
        best_batch, best = max(measured, key=lambda item: item[1])
        batch, rate = min((b, r) for b, r in measured if r >= fraction * best)
        out[dtype] = {
            "batch_size": batch,
            "images_per_s": rate,
            "best_batch_size": best_batch,
            "best_images_per_s": best,
        }
    return out


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
        lines += ["", *_recommendation(model), ""]
    return lines


def _recommendation(model: dict) -> list[str]:
    chosen = model.get("recommended_max_batch_size") or {}
    if not chosen:
        return ["No recommended batch size: no forward point was measured."]
    parts = [
        f"{dtype} **{c['batch_size']}** ({c['images_per_s']:.0f} img/s; best "
        f"{c['best_images_per_s']:.0f} at {c['best_batch_size']})"
        for dtype, c in chosen.items()
    ]
    return [
        f"Recommended `CLASSIFIER_MAX_BATCH_SIZE` (smallest measured batch whose forward reaches "
        f"{KNEE:.0%} of the best forward img/s): " + "; ".join(parts) + "."
    ]


def _compiled(results: dict) -> list[str]:
    settings = results["settings"]
    lines = [
        "## Compiled forward (CUDA graphs) vs eager",
        "",
        '`torch.compile(mode="reduce-overhead", dynamic=False)`, as the service compiles with '
        "`CLASSIFIER_COMPILE_MODE=reduce-overhead`, at warmed batch sizes; inputs already on "
        "the device, channels_last. Compile: the first three calls of a shape (compile, "
        f"warm, record), within a {settings.get('compiled_s', '-')} s budget.",
        "",
        "| model | dtype | batch | eager ms | compiled ms | speed-up | compile s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for model in results["compiled"]:
        name = model["architecture"]
        if "skipped" in model:
            notes.append(f"{name}: {model['skipped']}")
            continue
        for p in model["points"]:
            if "skipped" in p or "compiled" not in p:
                why = "skipped" if "skipped" in p else "not measured"
                lines.append(
                    f"| {name} | {model['dtype']} | {p['batch_size']} | {why} | - | - | - |"
                )
                continue
            lines.append(
                f"| {name} | {model['dtype']} | {p['batch_size']} | "
                f"{_cell(p['eager'], 'ms_per_batch_p50', 2)} | "
                f"{_cell(p['compiled'], 'ms_per_batch_p50', 2)} | {p['speedup']:.2f} | "
                f"{p['compile_s']:.1f} |"
            )
        if "note" in model:
            notes.append(f"{name}: {model['note']}")
    if not any("points" in m and "skipped" not in m for m in results["compiled"]):
        lines = lines[:-3]  # nothing measured: the notes say why, without an empty table
    return [*lines, "", *[f"- {n}" for n in notes], ""] if notes else [*lines, ""]


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
    sections = (
        ("ceiling", _ceiling),
        ("compiled", _compiled),
        ("decode", _decode),
        ("agreement", _agreement),
    )
    for key, section in sections:
        if key in results:
            lines += section(results)
        elif key in results["settings"].get("sections", [key]):
            lines += [f"## {key.capitalize()}", "", "Not measured (see errors).", ""]
    return "\n".join(lines)
