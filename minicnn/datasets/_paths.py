"""Where the loaders look for data: environment variables, the cache, and the not-found report.

Environment variables
---------------------
``MINICNN_HOME``
    minicnn's own folder; the dataset cache is ``$MINICNN_HOME/datasets`` (default
    ``~/.minicnn/datasets``). Downloads land there.
``MINICNN_DATASETS``
    A folder (or several, separated by ``os.pathsep``) where you keep data sets yourself, e.g. a
    shared, read-only copy. Searched before the cache; nothing is ever written there.
``MINICNN_OFFLINE``
    Set to ``1`` (or ``true``/``yes``) to never download: a missing data set raises at once.
``MINICNN_DATASETS_MIRROR``
    A base URL tried before the official address for every data set (the file name is appended).
"""
from __future__ import annotations

import os
from pathlib import Path

from ._errors import DatasetNotFoundError

__all__ = ["home_dir", "cache_dir", "user_dirs", "offline", "not_found"]

ENV_HOME = "MINICNN_HOME"
ENV_DATASETS = "MINICNN_DATASETS"
ENV_OFFLINE = "MINICNN_OFFLINE"
ENV_MIRROR = "MINICNN_DATASETS_MIRROR"


def home_dir():
    """Return minicnn's folder: ``$MINICNN_HOME``, else ``~/.minicnn`` (not created here)."""
    value = os.environ.get(ENV_HOME, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".minicnn"


def cache_dir():
    """Return the dataset cache, ``home_dir() / "datasets"`` (not created here)."""
    return home_dir() / "datasets"


def user_dirs():
    """Return the folders named by ``$MINICNN_DATASETS``, in order (empty list when unset)."""
    value = os.environ.get(ENV_DATASETS, "")
    return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]


def offline():
    """True when ``$MINICNN_OFFLINE`` asks never to download."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}


def download_refused(download, tried):
    """Why a download may not be attempted (``download=False`` or ``$MINICNN_OFFLINE``),
    recorded in ``tried``; None when it may."""
    if not download:
        reason = "download=False"
    elif offline():
        reason = f"${ENV_OFFLINE} is set"
    else:
        return None
    tried.append(f"download: not attempted ({reason})")
    return reason


def mirror_from_env(dataset_var):
    """Return the base URLs configured by environment for one dataset, most specific first."""
    urls = []
    for var in (dataset_var, ENV_MIRROR):
        value = os.environ.get(var, "").strip() if var else ""
        if value:
            urls.append(value)
    return urls


def not_found(label, what, tried, how_to_provide, env_entry, cache_target):
    """Build the error raised when a data set is nowhere: what was tried and how to provide it.

    Parameters
    ----------
    label : str
        The public function, e.g. ``"cifar10.load_data"``.
    what : str
        The data set's name, e.g. ``"CIFAR-10"``.
    tried : list of str
        One line per place looked at, with what was found there.
    how_to_provide : str
        What ``path=`` accepts, e.g. ``"the cifar-10-python.tar.gz archive or ..."``.
    env_entry : str
        What to put in a ``$MINICNN_DATASETS`` folder, e.g. ``"a fashion-mnist/ folder"``.
    cache_target : pathlib.Path
        Where copying the official files works like a download.
    """
    lines = [f"{label}: could not find {what}. Tried, in order:"]
    lines += [f"  {i}. {line}" for i, line in enumerate(tried, 1)]
    lines.append(
        f"To provide it: pass path= ({how_to_provide}); or put {env_entry} in a folder named by "
        f"${ENV_DATASETS}; or copy the official files into {cache_target}. To work with no network "
        f"and no files, use the built-in minicnn.datasets.shapes.load_data().")
    return DatasetNotFoundError("\n".join(lines), tried)
