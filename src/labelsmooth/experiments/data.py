"""Data for ``labelsmooth compare``: built-in scikit-learn data sets, CSV / ``.npz`` files, checks, split.

Every check raises ``ValueError`` with a one-line message naming the problem, before anything is
written. numpy and scikit-learn are imported inside the functions.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

BUILTIN = ("digits", "breast_cancer", "wine")
#: fractions of the data held out for validation (temperature scaling) and test.
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
_NAN_STRINGS = {"", "nan", "na", "n/a", "null", "none", "?"}


@dataclass
class Dataset:
    """Features ``X`` (N, D) float64 numpy array, labels ``y`` (N,) int64 in ``[0, K)``."""

    name: str
    X: Any
    y: Any
    class_names: list[str]
    feature_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Split:
    """Standardised float32 tensors of the stratified train / validation / test split."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def load_builtin(name: str) -> Dataset:
    """One of scikit-learn's bundled data sets (no download): digits, breast_cancer, wine."""
    from sklearn import datasets

    loaders = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
               "wine": datasets.load_wine}
    if name not in loaders:
        raise ValueError(f"--dataset {name!r} is not known; allowed: {', '.join(BUILTIN)}")
    bunch = loaders[name]()
    names = [str(n) for n in getattr(bunch, "target_names", sorted(set(bunch.target)))]
    feature_names = [str(n) for n in getattr(bunch, "feature_names", [])]
    return check_dataset(Dataset(name, bunch.data, bunch.target, names, feature_names))


def load_file(path: str, target: str | None = None) -> Dataset:
    """A CSV (header row, one label column named by ``target``, numeric features) or an ``.npz``
    holding ``X`` (N, D) and ``y`` (N,)."""
    if not os.path.exists(path):
        raise ValueError(f"--data {path!r}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"--data {path!r} is a directory, expected a .csv or .npz file")
    if path.lower().endswith(".npz"):
        return _load_npz(path)
    return _load_csv(path, target)


def _load_npz(path: str) -> Dataset:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("X", "y") if k not in archive.files]
            if missing:
                raise ValueError(f"--data {path!r} has no array {missing[0]!r}; an .npz needs 'X' "
                                 f"(samples x features) and 'y' (labels), found: "
                                 f"{', '.join(archive.files) or 'nothing'}")
            X, y = archive["X"], archive["y"]
    except (OSError, EOFError) as exc:  # np.load wraps zip errors as OSError / BadZipFile
        raise ValueError(f"--data {path!r} is not a readable .npz file ({exc})") from None
    except ValueError as exc:
        if "has no array" in str(exc):
            raise
        raise ValueError(f"--data {path!r} is not a readable .npz file ({exc})") from None
    if X.ndim != 2:
        raise ValueError(f"--data {path!r}: X must be 2-D (samples x features), got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"--data {path!r}: y must be 1-D with {X.shape[0]} labels (one per row of X), "
                         f"got shape {y.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise ValueError(f"--data {path!r}: X has non-numeric dtype {X.dtype}; features must be numbers")
    if np.iscomplexobj(X):
        raise ValueError(f"--data {path!r}: X is complex; features must be real numbers")
    name = os.path.basename(path)
    return check_dataset(Dataset(name, X.astype(np.float64), y, [],
                                 [f"x{i}" for i in range(X.shape[1])]))


def _load_csv(path: str, target: str | None) -> Dataset:
    import numpy as np

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise ValueError(f"--data {path!r} is not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise ValueError(f"--data {path!r} is not a valid CSV file ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"--data {path!r} is empty; expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if target is None:
        if "target" not in header:
            raise ValueError(f"--data {path!r}: no --target given and no column named 'target'; "
                             f"columns are: {', '.join(header)}")
        target = "target"
    if target not in header:
        raise ValueError(f"--data {path!r} has no target column {target!r}; columns are: "
                         f"{', '.join(header)}")
    if header.count(target) > 1:
        raise ValueError(f"--data {path!r} has {header.count(target)} columns named {target!r}")
    t = header.index(target)
    features = [i for i in range(len(header)) if i != t]
    if not features:
        raise ValueError(f"--data {path!r} has no feature columns besides the target {target!r}")
    X = np.empty((len(body), len(features)), dtype=np.float64)
    labels: list[str] = []
    for r, row in enumerate(body):
        line = r + 2  # 1-based, after the header
        if len(row) != len(header):
            raise ValueError(f"--data {path!r} line {line} has {len(row)} fields, the header has "
                             f"{len(header)}")
        label = row[t].strip()
        if label.lower() in _NAN_STRINGS:
            raise ValueError(f"--data {path!r} line {line}: the target {target!r} is missing")
        labels.append(label)
        for j, col in enumerate(features):
            cell = row[col].strip()
            if cell.lower() in _NAN_STRINGS:
                raise ValueError(f"--data {path!r}: feature column {header[col]!r} has a missing/NaN "
                                 f"value at line {line}; remove or impute it")
            try:
                X[r, j] = float(cell)
            except ValueError:
                raise ValueError(f"--data {path!r}: feature column {header[col]!r} is not numeric "
                                 f"(line {line}: {cell!r}); encode it as numbers") from None
    y = _labels_array(labels)
    return check_dataset(Dataset(os.path.basename(path), X, y, [],
                                 [header[i] for i in features]))


def _labels_array(labels: list[str]) -> Any:
    """Integer-looking labels stay numbers (sorted numerically); anything else is a class name."""
    import numpy as np

    try:
        values = [float(v) for v in labels]
        if all(math.isfinite(v) and v == int(v) for v in values):
            return np.asarray([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    return np.asarray(labels, dtype=object)


def check_dataset(data: Dataset) -> Dataset:
    """Check features and labels and encode the labels as ``0..K-1`` (sorted unique values).

    Raises ``ValueError`` for: no samples, NaN/inf features, a single class, fewer samples than
    ``3 * K``, or a class with fewer than 3 samples (each split needs one of every class).
    """
    import numpy as np

    X = np.asarray(data.X, dtype=np.float64)
    y_raw = np.asarray(data.y)
    where = f"data set {data.name!r}"
    if X.shape[0] == 0:
        raise ValueError(f"{where} has no samples")
    if X.shape[1] == 0:
        raise ValueError(f"{where} has no feature columns")
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        col = data.feature_names[c] if c < len(data.feature_names) else f"#{c}"
        kind = "NaN" if np.isnan(X[r, c]) else "infinite"
        raise ValueError(f"{where} has {int(bad.sum())} {kind}/non-finite feature value(s), first in "
                         f"column {col!r} of sample {r}; remove or impute them")
    if y_raw.ndim != 1 or y_raw.shape[0] != X.shape[0]:
        raise ValueError(f"{where}: labels must be 1-D with one per sample ({X.shape[0]}), got shape "
                         f"{y_raw.shape}")
    if y_raw.dtype.kind == "f" and not np.isfinite(y_raw).all():
        raise ValueError(f"{where} has {int((~np.isfinite(y_raw)).sum())} NaN/infinite label(s), first "
                         f"at sample {int(np.argmin(np.isfinite(y_raw)))}; every sample needs a class")
    classes, y = np.unique(y_raw, return_inverse=True)
    # built-in data: labels are already 0..K-1 indices into the names
    names = ([data.class_names[int(c)] for c in classes] if data.class_names
             else [str(c) for c in classes])
    k = len(classes)
    if k < 2:
        raise ValueError(f"{where} has a single class ({names[0]!r}); comparing classifiers needs "
                         f"at least 2 classes")
    n = X.shape[0]
    if n < 3 * k:
        raise ValueError(f"{where} has {n} samples, fewer than 3 x {k} classes = {3 * k}; every class "
                         f"needs a sample in train, validation and test")
    counts = np.bincount(y, minlength=k)
    if counts.min() < 3:
        c = int(counts.argmin())
        raise ValueError(f"{where}: class {names[c]!r} has only {int(counts[c])} sample(s); every "
                         f"class needs at least 3 (one each for train, validation and test)")
    return Dataset(data.name, X, y.astype(np.int64), names, data.feature_names)


def split(data: Dataset, seed: int) -> Split:
    """Stratified train / validation / test split (60 / 20 / 20, at least one sample of every class in
    each part) with scikit-learn, then features standardised with the training mean and std."""
    import numpy as np
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    n, k = len(data.y), data.num_classes
    idx = np.arange(n)
    n_test = max(k, round(TEST_FRACTION * n))
    n_val = max(k, round(VAL_FRACTION * n))
    rest, test = train_test_split(idx, test_size=n_test, stratify=data.y, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=data.y[rest],
                                  random_state=seed + 1)
    scaler = StandardScaler().fit(data.X[train])

    def part(ix: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(scaler.transform(data.X[ix]).astype(np.float32))
        return x, torch.from_numpy(data.y[ix].astype(np.int64))

    (xtr, ytr), (xva, yva), (xte, yte) = part(train), part(val), part(test)
    return Split(xtr, ytr, xva, yva, xte, yte, k)
