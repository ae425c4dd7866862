"""The two ends of every plot that hf-fnl and its recipes write: a figure on the file-only Agg
backend (no display needed, matplotlib imported only when a plot is made), and saving it."""

from __future__ import annotations

__all__ = ["new_figure", "save_figure"]


def new_figure(*args, **kwargs):
    """matplotlib.pyplot.subplots(*args, **kwargs) on the Agg backend; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str) -> None:
    """Lay the figure out, write it as a PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
