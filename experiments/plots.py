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


def accuracy_vs_ratio(report: dict, path: Path) -> Path:
    """Top-1 against the comm ratio (learned masks), with the random-mask point
    and the dense split for reference."""
    plt = _pyplot()
    sweep = sorted(report["sweep"], key=lambda point: point["comm_ratio"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    ax.plot([p["comm_ratio"] for p in sweep], [100 * p["top1"] for p in sweep], "o-",
            label="learned masks")
    quality = report["quality"]
    if quality["random_mask"] is not None:
        ax.plot([report["comm_ratio"]], [100 * quality["random_mask"]], "s",
                label="random masks")
    if quality["dense_split"] is not None:
        ax.axhline(100 * quality["dense_split"], color="gray", linestyle="--",
                   label="dense split")
    ax.set_xlabel("comm ratio (channels sent / channels a node holds)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{report['model']} on {report['nodes']} nodes, {report['dataset']}")
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
