"""The experiments' PNG figures, drawn from their reports (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in CI and notebooks
    import matplotlib.pyplot as plt

    return plt


def bytes_per_layer(report: dict, path: Path) -> Path:
    """Bar chart: bytes each layer sends per image, dense split against DISCO."""
    plt = _pyplot()
    layers = [layer for layer in report["layers"] + report.get("other_parts", [])
              if layer["dense_split"]["comm_bytes"] > 0]  # other parts: LayerNorm statistics
    x = range(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(layers)), 3.6), layout="constrained")
    ax.bar([i - 0.2 for i in x], [layer["dense_split"]["comm_bytes"] for layer in layers],
           width=0.4, label="dense split")
    ax.bar([i + 0.2 for i in x], [layer["disco"]["comm_bytes"] for layer in layers],
           width=0.4, label=f"DISCO (comm ratio {report['comm_ratio']})")
    ax.set_yscale("log")
    ax.set_xticks(list(x), [layer["name"] for layer in layers], rotation=90, fontsize=6)
    ax.set_ylabel("bytes sent per image")
    ax.set_title(f"{report['model']} on {report['nodes']} nodes: "
                 f"{report['comm_reduction']:.2f}x less communication")
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_bytes(report: dict, path: Path) -> Path:
    """The Pareto curve: the task's metric (top-1, mIoU, ...) against bytes
    sent per image (log scale), one line per series and payload of the
    sweep (:mod:`experiments.sweep`), the dense split marked at its bytes,
    single device and no communication (nothing sent) as horizontal lines."""
    plt = _pyplot()
    metric, label = report["quality"]["metric"], report.get("metric_label", "top-1")
    scale = report.get("metric_scale", 100.0)  # 100: a share in %
    unit = "%" if scale == 100 else report.get("metric_unit", "")
    colours = {"allocated": "tab:blue", "learned": "tab:orange", "random": "tab:gray"}
    markers = {"float32": "o", "bfloat16": "s", "int8": "^"}
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    lines: dict[tuple[str, str], list] = {}
    for point in report["sweep"]:
        if point["bytes_per_image"] > 0:  # nothing sent: not on a log scale (a line below)
            lines.setdefault((point["series"], point["payload_dtype"]), []).append(point)
    for (series, payload), points in sorted(lines.items()):
        points.sort(key=lambda p: p["bytes_per_image"])
        ax.plot([p["bytes_per_image"] for p in points], [scale * p[metric] for p in points],
                marker=markers.get(payload, "o"), color=colours.get(series),
                linestyle="-" if payload == "float32" else ("--" if payload == "int8" else ":"),
                label=f"{points[0]['label']}, {payload}")
    quality, comm = report["quality"], report["comm_bytes_per_sample"]
    if quality["dense_split"] is not None:
        ax.plot([comm["dense_split"]], [scale * quality["dense_split"]], "*", color="black",
                markersize=12, label="dense split (float32, every channel)")
    if quality.get("single") is not None:
        ax.axhline(scale * quality["single"], color="black", linestyle=":", linewidth=1,
                   label="single device (sends nothing)")
    if quality.get("no_comm") is not None:
        ax.axhline(scale * quality["no_comm"], color="tab:red", linestyle=":", linewidth=1,
                   label="no communication")
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent per image (all node pairs, log scale)")
    ax.set_ylabel(f"test {label} ({unit})")
    ax.set_title(f"{report['model']} on {report['nodes']} nodes, {report['dataset']}")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def segmentation_examples(models: dict, test, task, path: Path, names, count: int = 4) -> Path:
    """Test scenes, one per row: the input, the ground truth, and the
    predictions of the dense split, DISCO and random masks (the variants
    ``models`` has), coloured by class with a legend."""
    import jax
    import numpy as np
    from matplotlib.patches import Patch

    plt = _pyplot()
    columns = [(key, title) for key, title in (("dense_split", "dense split"),
                                                ("learned", "DISCO"), ("random", "random masks"))
               if key in models]
    images, truth = test.images[:count], test.labels[:count]
    predicted = {}
    for key, _ in columns:
        model = models[key]
        model.eval()
        predicted[key] = np.asarray(task.predict(task.outputs(model(jax.numpy.asarray(images)))))
        model.train()
    colours = plt.get_cmap("tab20", 20)
    palette = np.array([(0.0, 0.0, 0.0, 1.0)] + [colours(2 * i % 20 + i // 10)
                                                 for i in range(len(names) - 1)])
    fig, axes = plt.subplots(len(images), 2 + len(columns),
                             figsize=(2.0 * (2 + len(columns)), 2.0 * len(images) + 0.8),
                             squeeze=False, layout="constrained")
    for row in range(len(images)):
        panels = [("input", None), ("ground truth", truth[row])]
        panels += [(title, predicted[key][row]) for key, title in columns]
        for ax, (title, classes) in zip(axes[row], panels, strict=True):
            if classes is None:
                ax.imshow(images[row, ..., 0], cmap="gray")
            else:
                ax.imshow(palette[classes], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.legend(handles=[Patch(color=palette[i], label=name) for i, name in enumerate(names)],
               loc="outside lower center", ncol=6, fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def detection_examples(models: dict, test, task, path: Path, names, count: int = 4,
                       min_score: float = 0.3) -> Path:
    """Test scenes, one per row: the ground-truth boxes, and the detections
    (score at least ``min_score``) of the dense split, DISCO and random masks
    (the variants ``models`` has), each box drawn in its class's colour with
    the class name (and the score)."""
    import jax
    import numpy as np
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    columns = [(key, title) for key, title in (("dense_split", "dense split"),
                                                ("learned", "DISCO"), ("random", "random masks"))
               if key in models]
    images, truth = test.images[:count], np.asarray(test.labels[:count])
    found = {}
    for key, _ in columns:
        model = models[key]
        model.eval()
        found[key] = [np.asarray(x) for x in
                      task.predict(task.outputs(model(jax.numpy.asarray(images))))]
        model.train()
    colours = plt.get_cmap("tab10", 10)
    fig, axes = plt.subplots(len(images), 1 + len(columns),
                             figsize=(2.6 * (1 + len(columns)), 2.6 * len(images)),
                             squeeze=False, layout="constrained")
    for row in range(len(images)):
        rows = truth[row][truth[row][:, 4] >= 0]
        panels = [("ground truth", rows[:, :4], rows[:, 4].astype(int), None)]
        for key, title in columns:
            boxes, scores, classes = (x[row] for x in found[key])
            keep = scores >= min_score
            panels.append((title, boxes[keep], classes[keep], scores[keep]))
        for ax, (title, boxes, classes, scores) in zip(axes[row], panels, strict=True):
            ax.imshow(images[row, ..., 0], cmap="gray")
            for index, ((x0, y0, x1, y1), cls) in enumerate(zip(boxes, classes, strict=True)):
                colour = colours(int(cls) % 10)
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                       edgecolor=colour, linewidth=1.2))
                text = names[cls] if scores is None else f"{names[cls]} {scores[index]:.2f}"
                ax.text(x0 - 0.5, y0 - 1.5, text, color="white", fontsize=5.5,
                        bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.8})
            ax.set_xlim(-0.5, images.shape[2] - 0.5), ax.set_ylim(images.shape[1] - 0.5, -0.5)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title if scores is None else f"{title} (score >= {min_score:g})",
                             fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def super_resolution_examples(models: dict, test, task, path: Path, crop: int = 96) -> Path:
    """One test image per row, a ``crop`` px square of it at high resolution
    (the centre of its most detailed quarter): bicubic upscaling, the dense
    split, DISCO and random masks (the variants ``models`` has) and the high-
    resolution original, each titled with its PSNR on the whole image."""
    import jax
    import numpy as np

    plt = _pyplot()
    columns = [(key, title) for key, title in (("dense_split", "dense split"),
                                                ("learned", "DISCO"), ("random", "random masks"))
               if key in models]
    images, truth = np.asarray(test.images), np.asarray(test.labels)
    panels = [("bicubic", task.bicubic(images))]
    for key, title in columns:
        model = models[key]
        model.eval()
        outputs = task.outputs(model(jax.numpy.asarray(images)))
        panels.append((title, np.asarray(task.predict(outputs))))
        model.train()
    panels.append(("high resolution", truth))
    fig, axes = plt.subplots(len(images), len(panels), figsize=(2.0 * len(panels),
                                                               2.1 * len(images)),
                             squeeze=False, layout="constrained")
    for row in range(len(images)):
        quarters = [(top, left) for top in (0, truth.shape[1] // 2)
                    for left in (0, truth.shape[2] // 2)]
        detail = [np.abs(np.diff(truth[row, t:t + truth.shape[1] // 2,
                                       s:s + truth.shape[2] // 2], axis=0)).mean()
                  for t, s in quarters]
        top, left = quarters[int(np.argmax(detail))]
        top += max(0, truth.shape[1] // 4 - crop // 2)
        left += max(0, truth.shape[2] // 4 - crop // 2)
        for ax, (title, pictures) in zip(axes[row], panels, strict=True):
            ax.imshow(pictures[row, top:top + crop, left:left + crop], interpolation="nearest")
            if title != "high resolution":
                psnr = task.image_metrics(pictures[row:row + 1], truth[row:row + 1])["psnr"]
                title = f"{title}\n{psnr:.2f} dB"
            ax.set_title(title, fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
