"""A picture of the latent space: the first two principal components of the volumes' features, by label.

Features are standardised before PCA so that no single code channel dominates by scale. Drawn with matplotlib's
Agg canvas directly (no pyplot, no display), so it works on headless servers and inside 3D Slicer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from MedAutoencoderLib.errors import ConfigurationError


def plot_latent_pca(features: np.ndarray, labels: np.ndarray, path: Union[str, Path]) -> Path:
    """Write a PNG scatter plot of the first two principal components of ``features`` coloured by ``labels``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigurationError("the latent plot needs matplotlib: "
                                 "pip install 'MedAutoencoderLib[features]'") from None
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    components = min(2, features.shape[1], features.shape[0])
    pca = PCA(n_components=components)
    projected = pca.fit_transform(StandardScaler().fit_transform(features))
    if components == 1:
        projected = np.column_stack([projected[:, 0], np.zeros(len(projected))])
    figure = Figure(figsize=(5, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label in np.unique(labels):
        chosen = labels == label
        axes.scatter(projected[chosen, 0], projected[chosen, 1], label=str(label), s=28, alpha=0.85)
    explained = list(pca.explained_variance_ratio_) + [0.0]
    axes.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    axes.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    axes.set_title(f"Latent space of {len(labels)} volumes")
    axes.legend(title="label")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
