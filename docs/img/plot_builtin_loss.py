"""Plot the built-in model's training loss curve (docs/img/builtin_loss.png).

Needs only numpy + matplotlib (not omicskern or torch), so any plotting environment works:

    python docs/img/plot_builtin_loss.py omicskern/data/models/hyenadna-omk-tiny/train_log.csv \
        docs/img/builtin_loss.png [EVAL.json]

With the ``--eval`` JSON of ``python -m omicskern.pipelines.train_builtin``, the held-out figures
(model and best Markov baseline) are drawn as horizontal lines.
"""

import csv
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main(log_csv, png, eval_json=None):
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss_bits_per_base"]) for r in rows])
    w = 25
    smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(step, loss, color="#9ecae1", lw=0.8, label="training loss (one batch: 8 windows x 1024 bases)")
    ax.plot(step[w - 1:], smooth, color="#08519c", lw=1.8, label=f"moving average ({w} steps)")
    ax.axhline(2.0, color="k", ls=":", lw=1, label="uniform over ACGT (2.0)")
    if eval_json:
        res = json.load(open(eval_json))["sets"]
        for name, color in (("ecoli_heldout", "#d94801"), ("lambda", "#238b45")):
            r = res[name]
            ax.axhline(r["model_bits_per_base"], color=color, lw=1.2,
                       label=f"{name}: model {r['model_bits_per_base']:.3f}")
            # the strongest of the three Markov baselines (usually the E. coli-only one)
            key = min(("markov_pooled", "markov_balanced", "markov_ecoli_only"),
                      key=lambda k: r[k + "_best"]["bits_per_base"])
            b = r[key + "_best"]
            ax.axhline(b["bits_per_base"], color=color, lw=1.2, ls="--",
                       label=f"{name}: best Markov ({key[7:]}, k={b['k']}) {b['bits_per_base']:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per base")
    ax.set_ylim(1.5, 2.6)
    ax.set_title("hyenadna-omk-tiny: training on E. coli K-12 (first 90%) + P. falciparum")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main(*sys.argv[1:])
