"""The figures of ``eproptax train``: learning curves and a raster of one sequence with the readout."""

from __future__ import annotations

import os

import jax
import numpy as np

from . import tasks as tasks_lib


def plot_run(out, task, model, params, history, key, *, title="") -> list[str]:
    """Writes ``learning_curves.png`` and ``raster.png`` (a spike raster with the readout and target) to ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figures (pip install 'eproptax[plot]').")
        return []
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = np.arange(1, len(history["loss"]) + 1)
    window = max(1, min(50, len(steps) // 10))  # running mean over `window` steps on top of the raw values
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")
    for ax, values, label in [(axes[0], history["loss"], "loss"), (axes[1], history["metric"], task.metric_name)]:
        ax.plot(steps, values, lw=0.6, alpha=0.35, color="C0")
        ax.plot(steps[window - 1 :], smooth(values), lw=1.5, color="C0", label=f"running mean ({window} steps)")
        ax.set(xlabel="training step", ylabel=label)
    axes[0].set(yscale="log", title=title)
    axes[1].legend(fontsize=8)
    if task.metric_name != "accuracy":
        axes[1].set_yscale("log")
    fig.tight_layout()
    paths.append(os.path.join(out, "learning_curves.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    inputs, targets = task.sample(key, 1)
    outputs, layer_outputs = tasks_lib.forward(model, params, inputs)
    fig = raster_figure(
        task,
        model,
        inputs[0],
        layer_outputs[0][0],
        outputs[0],
        jax.tree_util.tree_map(lambda a: a[0], targets),
        title=title,
    )
    paths.append(os.path.join(out, "raster.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def raster_figure(task, model, inputs, activity, outputs, targets, *, title=""):
    """A figure of one sequence: input raster, recurrent raster (or activations), readout against target.

    Args:
      task: the :class:`~eproptax.tasks.Task`.
      model: the model (spiking layers get a raster, others a heat map).
      inputs: ``(T, n_in)``; activity: the first recurrent layer's outputs ``(T, n_rec)``;
      outputs: ``(T, n_out)``; targets: one example's targets (leaves ``(T, ...)``).
    """
    import matplotlib.pyplot as plt

    inputs, activity, outputs = np.asarray(inputs), np.asarray(activity), np.asarray(outputs)
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [1, 2, 1.3]})
    t_in, i_in = np.nonzero(inputs > 0) if np.all((inputs == 0) | (inputs == 1)) else (None, None)
    if t_in is not None:
        axes[0].scatter(t_in, i_in, s=1, marker="|", c="k")
    else:
        axes[0].imshow(inputs.T, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest")
    axes[0].set(ylabel="input", title=title)
    if tasks_lib.is_spiking(model):
        t_z, i_z = np.nonzero(activity > 0)
        axes[1].scatter(t_z, i_z, s=1, marker="|", c="k")
        axes[1].set(ylabel="recurrent neuron", ylim=(-0.5, activity.shape[1] - 0.5))
    else:
        axes[1].imshow(
            activity.T, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"
        )
        axes[1].set(ylabel="recurrent unit")
    steps = np.arange(outputs.shape[0])
    mask = np.asarray(targets["mask"]) > 0
    if "label" in targets:
        probs = np.asarray(jax.nn.softmax(outputs, axis=-1))
        label = np.asarray(targets["label"])
        for k in range(outputs.shape[1]):
            (line,) = axes[2].plot(steps, probs[:, k], lw=1, label=f"p({k})" if outputs.shape[1] <= 4 else None)
            axes[2].plot(
                steps, np.where(mask, (label == k).astype(float), np.nan), lw=3, alpha=0.4, color=line.get_color()
            )
        axes[2].set(ylabel="readout (softmax)\nthick: target", ylim=(-0.05, 1.05))
        if outputs.shape[1] <= 4:
            axes[2].legend(loc="upper left", fontsize=7, ncol=outputs.shape[1])
    else:
        y = np.asarray(targets["y"])
        for k in range(outputs.shape[1]):
            (line,) = axes[2].plot(steps, outputs[:, k], lw=1)
            axes[2].plot(
                steps,
                np.where(mask, y[:, k], np.nan),
                lw=2,
                ls="--",
                alpha=0.6,
                color=line.get_color(),
                marker="o" if mask.sum() < 5 else None,
            )
        axes[2].set(ylabel="readout\ndashed: target")
    axes[2].set(xlabel="time step")
    fig.tight_layout()
    return fig
