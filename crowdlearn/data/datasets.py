"""Datasets: scikit-learn's bundled sets, Fashion-MNIST and CIFAR-10 from local files.

Every dataset comes back as a :class:`Dataset` with flat ``float32`` features, so that a device's
data can be an index array into ``x_train`` (never a copy).  Nothing here downloads anything:
scikit-learn's ``digits``, ``breast_cancer`` and ``diabetes`` ship inside the package, and
Fashion-MNIST and CIFAR-10 are read from files already on the machine (see :func:`load_dataset`).
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crowdlearn.errors import CrowdlearnError, DatasetNotFoundError

__all__ = [
    "CIFAR10_FILES",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_FILES",
    "Dataset",
    "cifar10_problem",
    "fashion_mnist_available",
    "load_dataset",
]

#: Environment variable naming a Fashion-MNIST directory of IDX files or a Keras-style ``.npz``.
FASHION_MNIST_ENV = "CROWDLEARN_FASHION_MNIST"
#: Where Debian's ``dataset-fashion-mnist`` package installs the gzipped IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The four IDX files (each may also carry a ``.gz`` suffix), keyed by the array they hold.
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_FASHION_SHAPE = (28, 28)
_FASHION_CLASSES = 10
_TASKS = ("classification", "regression")


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split with flat ``float32`` features.

    Attributes
    ----------
    name : str
        Canonical dataset name (``"digits"``, ``"breast_cancer"``, ``"diabetes"``,
        ``"fashion_mnist"``).
    x_train, x_test : numpy.ndarray
        ``float32`` features of shape ``(N, d)``; image models reshape with ``image_shape``.
    y_train, y_test : numpy.ndarray
        ``int64`` class labels in ``[0, num_classes)`` for classification, ``float32`` targets of
        shape ``(N,)`` for regression.
    num_classes : int
        Number of classes; 0 for regression.
    image_shape : tuple of int or None
        ``(H, W, C)`` for image sets, ``None`` for tabular ones.
    task : str
        ``"classification"`` or ``"regression"``.

    Notes
    -----
    Equality and hashing are by identity (comparing arrays element-wise is not what ``==`` on a
    dataset should mean).  :func:`load_dataset` returns read-only arrays.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple[int, ...] | None
    task: str

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            raise ValueError(f"Dataset.task must be one of {_TASKS}, got {self.task!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 2 or x.dtype != np.float32:
                raise ValueError(f"x_{split} must be float32 (N, d), got {x.dtype} {x.shape}")
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(f"y_{split} must have shape ({x.shape[0]},), got {y.shape}")
            want = np.int64 if self.task == "classification" else np.float32
            if y.dtype != want:
                raise ValueError(
                    f"y_{split} of a {self.task} set must be {want.__name__}, got {y.dtype}"
                )
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(
                f"x_train has {self.x_train.shape[1]} features but x_test has {self.x_test.shape[1]}"
            )
        if (self.task == "regression") != (self.num_classes == 0):
            raise ValueError(f"num_classes={self.num_classes} does not fit task {self.task!r}")
        if self.image_shape is not None and int(np.prod(self.image_shape)) != self.x_train.shape[1]:
            raise ValueError(
                f"image_shape {self.image_shape} does not match {self.x_train.shape[1]} features"
            )

    @property
    def num_features(self) -> int:
        """Number of features per sample (``d``)."""
        return int(self.x_train.shape[1])

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, train={self.x_train.shape}, "
            f"test={self.x_test.shape}, num_classes={self.num_classes}, image_shape={self.image_shape})"
        )


# --------------------------------------------------------------------------------------------
# scikit-learn sets


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


def _split(x: np.ndarray, y: np.ndarray, *, seed: int, stratify: bool):
    from sklearn.model_selection import train_test_split

    return train_test_split(
        x, y, test_size=0.25, random_state=seed, shuffle=True, stratify=y if stratify else None
    )


#: Where the scikit-learn tables' standardisation constants come from (see :func:`load_dataset`).
STANDARDISE = ("public", "train")


def _standardise(train: np.ndarray, test: np.ndarray,
                 source: str = "public") -> tuple[np.ndarray, np.ndarray]:
    """Scale both parts with the mean and std of ``source``'s part (a constant column stays 0).

    ``"public"``: the held-out test part, which no participant holds, so the scaling reveals
    nothing about the participants' rows (a differentially private run's guarantee needs this);
    ``"train"``: the training part (participants' rows included; not covered by any DP
    guarantee).
    """
    ref = test if source == "public" else train
    mean = ref.mean(axis=0)
    std = ref.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def _load_digits(seed: int, standardise: str = "public") -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = _split(x, y, seed=seed, stratify=True)
    return Dataset("digits", x_tr, y_tr, x_te, y_te, 10, (8, 8, 1), "classification")


def _load_breast_cancer(seed: int, standardise: str = "public") -> Dataset:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = _split(bunch.data.astype(np.float64), y, seed=seed, stratify=True)
    x_tr, x_te = _standardise(x_tr, x_te, standardise)
    return Dataset("breast_cancer", x_tr, y_tr, x_te, y_te, 2, None, "classification")


def _load_diabetes(seed: int, standardise: str = "public") -> Dataset:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    x_tr, x_te, y_tr, y_te = _split(
        bunch.data.astype(np.float64), bunch.target.astype(np.float64), seed=seed, stratify=False
    )
    x_tr, x_te = _standardise(x_tr, x_te, standardise)
    y_tr, y_te = _standardise(y_tr[:, None], y_te[:, None], standardise)
    return Dataset(
        "diabetes", x_tr, y_tr[:, 0].copy(), x_te, y_te[:, 0].copy(), 0, None, "regression"
    )


_SKLEARN_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "breast_cancer": _load_breast_cancer,
    "diabetes": _load_diabetes,
}
DATASET_NAMES = (*_SKLEARN_LOADERS, "fashion_mnist", "cifar10")


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: locating the files


def _expected_forms() -> str:
    names = ", ".join(f"{n}[.gz]" for n in FASHION_MNIST_FILES.values())
    return (
        f"a directory holding the four IDX files ({names}), gzipped or not, "
        f"or a Keras-style .npz file with keys {', '.join(_NPZ_KEYS)}"
    )


def _idx_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The IDX file for each array in ``directory`` (plain preferred to .gz), and the missing names."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in FASHION_MNIST_FILES.items():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(f"{stem}[.gz]")
    return found, missing


def _check_source(where: Path) -> tuple[Path | None, str]:
    """``(resolved source, "")`` if ``where`` holds Fashion-MNIST, else ``(None, why not)``."""
    if not where.exists():
        return None, "does not exist"
    if where.is_dir():
        _, missing = _idx_files(where)
        if missing:
            return None, f"directory lacks {', '.join(missing)}"
        return where.resolve(), ""
    if not zipfile.is_zipfile(where):
        hint = ""
        if where.name.removesuffix(".gz") in FASHION_MNIST_FILES.values():
            hint = f" (pass its directory {where.parent} instead of the single IDX file)"
        return None, f"is a file but not an .npz archive{hint}"
    try:
        with np.load(where, allow_pickle=False) as npz:
            keys = set(npz.files)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return None, f"cannot be opened as .npz ({exc})"
    missing = [k for k in _NPZ_KEYS if k not in keys]
    if missing:
        return (
            None,
            f".npz lacks key(s) {', '.join(missing)} (has {', '.join(sorted(keys)) or 'none'})",
        )
    return where.resolve(), ""


def _keras_cache_dirs() -> list[Path]:
    dirs = []
    keras_home = os.environ.get("KERAS_HOME")
    if keras_home:
        dirs.append(Path(keras_home).expanduser() / "datasets" / "fashion-mnist")
    dirs.append(Path("~/.keras/datasets/fashion-mnist").expanduser())
    return dirs


def _locate_fashion_mnist(path: str | os.PathLike | None) -> Path:
    """Find Fashion-MNIST on this machine; raise :class:`DatasetNotFoundError` if it is absent."""
    if path is not None:
        where = Path(path).expanduser()
        source, why = _check_source(where)
        if source is None:
            raise DatasetNotFoundError(
                f"Fashion-MNIST: data.path {str(where)!r} {why}; expected {_expected_forms()}."
            )
        return source

    tried = ["data.path: not given"]
    env = os.environ.get(FASHION_MNIST_ENV, "")
    if env:
        where = Path(env).expanduser()
        source, why = _check_source(where)
        if source is None:
            # The user pointed us somewhere on purpose; silently using another copy would hide that.
            raise DatasetNotFoundError(
                f"Fashion-MNIST: ${FASHION_MNIST_ENV}={env!r} {why}; expected {_expected_forms()}. "
                f"Fix the variable or unset it to use the default locations."
            )
        return source
    tried.append(f"${FASHION_MNIST_ENV}: not set")

    for where in (DEBIAN_FASHION_MNIST_DIR, *_keras_cache_dirs()):
        source, why = _check_source(where)
        if source is not None:
            return source
        tried.append(f"{where}: {why}")

    places = "\n".join(f"  - {t}" for t in tried)
    raise DatasetNotFoundError(
        "Fashion-MNIST is not on this machine (crowdlearn never downloads data). Looked in:\n"
        f"{places}\n"
        "To fix: `apt-get install dataset-fashion-mnist` (installs it under "
        f"{DEBIAN_FASHION_MNIST_DIR}), or pass data.path=DIR with the IDX files "
        f"({', '.join(f'{n}[.gz]' for n in FASHION_MNIST_FILES.values())}) or data.path=FILE.npz "
        f"(Keras format with keys {', '.join(_NPZ_KEYS)}), or set ${FASHION_MNIST_ENV} to either."
    )


def fashion_mnist_available(path: str | os.PathLike | None = None) -> bool:
    """Whether :func:`load_dataset` would find Fashion-MNIST files (without reading them).

    Parameters
    ----------
    path : str or os.PathLike, optional
        Check this directory / ``.npz`` only, as ``load_dataset(..., path=path)`` would.

    Returns
    -------
    bool
        True if a complete copy is present where the lookup would go.  The files' contents are
        not validated; a corrupt copy still fails at load time.

    Examples
    --------
    >>> from crowdlearn.data import fashion_mnist_available
    >>> fashion_mnist_available("/nonexistent")
    False
    """
    try:
        _locate_fashion_mnist(path)
    except DatasetNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: reading the files

_IDX_UBYTE = 0x08


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes with ``ndim`` dimensions (gzipped if it ends in .gz)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise CrowdlearnError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CrowdlearnError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); "
            "replace it with an intact copy of the Fashion-MNIST files"
        )
    if raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise CrowdlearnError(
            f"{path}: IDX header says element type 0x{raw[2]:02x} with {raw[3]} dimension(s); "
            f"expected unsigned bytes (0x08) with {ndim} dimension(s)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CrowdlearnError(f"{path}: IDX file truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        raise CrowdlearnError(
            f"{path}: IDX header declares shape {dims} ({size} bytes of data) but the file holds "
            f"{len(raw) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _fashion_arrays(
    origin: str, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one split and turn it into flat float32 in [0, 1] and int64 labels."""
    if images.dtype != np.uint8:
        raise CrowdlearnError(f"{origin}: images must be uint8 pixel values, got {images.dtype}")
    n = images.shape[0] if images.ndim else 0
    if images.ndim < 2 or images.shape[1:] not in ((28, 28), (28, 28, 1), (784,)):
        raise CrowdlearnError(
            f"{origin}: images have shape {images.shape}; expected (N, 28, 28) Fashion-MNIST images"
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != n:
        raise CrowdlearnError(f"{origin}: {n} images but labels have shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise CrowdlearnError(f"{origin}: labels must be integers, got {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= _FASHION_CLASSES):
        raise CrowdlearnError(
            f"{origin}: labels must lie in [0, {_FASHION_CLASSES}), found {labels.min()}..{labels.max()}"
        )
    x = images.reshape(n, 784).astype(np.float32)
    x /= np.float32(255.0)
    return x, labels.astype(np.int64)


def _stamp(source: Path) -> tuple:
    files = [source] if source.is_file() else list(_idx_files(source)[0].values())
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)


@functools.lru_cache(maxsize=2)
def _load_fashion_cached(source: str, stamp: tuple) -> Dataset:
    """Read Fashion-MNIST from a resolved source; ``stamp`` invalidates the cache on file change."""
    del stamp  # only part of the cache key
    where = Path(source)
    if where.is_dir():
        files, _ = _idx_files(where)
        raw = {key: _read_idx(f, 3 if key.startswith("x") else 1) for key, f in files.items()}
        origin = {"train": f"{where} (train-*)", "test": f"{where} (t10k-*)"}
    else:
        try:
            with np.load(where, allow_pickle=False) as npz:
                raw = {k: np.asarray(npz[k]) for k in _NPZ_KEYS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise CrowdlearnError(f"cannot read Fashion-MNIST .npz {where}: {exc}") from exc
        origin = {"train": f"{where} (x_train/y_train)", "test": f"{where} (x_test/y_test)"}
    x_train, y_train = _fashion_arrays(origin["train"], raw["x_train"], raw["y_train"])
    x_test, y_test = _fashion_arrays(origin["test"], raw["x_test"], raw["y_test"])
    _readonly(x_train, y_train, x_test, y_test)
    return Dataset(
        "fashion_mnist",
        x_train,
        y_train,
        x_test,
        y_test,
        _FASHION_CLASSES,
        (28, 28, 1),
        "classification",
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10: the python-pickle batches of the official archive, from a user's path

#: The six batch files of ``cifar-10-batches-py`` (Krizhevsky, "Learning Multiple Layers of
#: Features from Tiny Images", 2009; https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_CIFAR_SHAPE = (32, 32, 3)
_CIFAR_CLASSES = 10
_CIFAR_LAYOUT = (
    "the 'python version' of CIFAR-10: a directory (cifar-10-batches-py) holding the pickled "
    f"batches {', '.join(CIFAR10_FILES)} (each a dict with b'data', uint8 N x 3072 rows of "
    "1024 red, 1024 green, 1024 blue pixels, and b'labels', N integers 0-9), or the "
    "cifar-10-python.tar.gz archive of it; crowdlearn never downloads it"
)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else: dicts, lists, bytes, numbers and numpy arrays
    (a pickle can name any callable; a data file given by path must not run code)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        return super().find_class(module, name)


def _cifar_names(where: Path) -> list[str]:
    """The batch files missing at ``where`` (a directory, or a tar archive holding them in any
    folder)."""
    if where.is_dir():
        present = {n for n in CIFAR10_FILES if (where / n).is_file()}
    else:
        with tarfile.open(where, "r:*") as tar:
            present = {Path(m.name).name for m in tar.getmembers() if m.isfile()}
    return [n for n in CIFAR10_FILES if n not in present]


def _cifar_read(where: Path) -> dict[str, bytes]:
    """The bytes of each batch file at ``where`` (one pass over an archive)."""
    if where.is_dir():
        return {n: (where / n).read_bytes() for n in CIFAR10_FILES}
    out: dict[str, bytes] = {}
    with tarfile.open(where, "r:*") as tar:
        for m in tar:
            name = Path(m.name).name
            if m.isfile() and name in CIFAR10_FILES and name not in out:
                fh = tar.extractfile(m)
                if fh is not None:
                    out[name] = fh.read()
    return out


def cifar10_problem(path: str | os.PathLike | None) -> str:
    """Why ``path`` does not hold CIFAR-10 in the expected layout ("" if it does); the files'
    contents are checked when they are read.

    >>> cifar10_problem(None)[:40]
    'data.path: CIFAR-10 is read from a path '
    >>> "does not exist" in cifar10_problem("/nonexistent/cifar-10-batches-py")
    True
    """
    if not path:
        return ("data.path: CIFAR-10 is read from a path you give (crowdlearn never downloads "
                f"data); set data.path to {_CIFAR_LAYOUT}")
    where = Path(path).expanduser()
    if not where.exists():
        return f"data.path: {str(where)!r} does not exist; expected {_CIFAR_LAYOUT}"
    if where.is_file() and not tarfile.is_tarfile(where):
        return f"data.path: {str(where)!r} is a file but not a tar archive; expected {_CIFAR_LAYOUT}"
    try:
        missing = _cifar_names(where)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        return f"data.path: cannot read {str(where)!r} ({exc}); expected {_CIFAR_LAYOUT}"
    if missing:
        return (f"data.path: {str(where)!r} lacks {', '.join(missing)}; expected "
                f"{_CIFAR_LAYOUT}")
    return ""


def _cifar_batch(origin: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch as flat channels-last float32 images in [0, 1] and int64 labels."""
    try:
        d = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:    # a corrupt or foreign pickle fails in many ways
        raise CrowdlearnError(f"{origin}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(d, dict):
        raise CrowdlearnError(f"{origin}: expected a pickled dict, got {type(d).__name__}")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise CrowdlearnError(f"{origin}: the batch lacks b'data' or b'labels' "
                              f"(keys {sorted(map(repr, d))})")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CrowdlearnError(f"{origin}: b'data' must be uint8 of shape (N, 3072), got "
                              f"{data.dtype} {data.shape}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise CrowdlearnError(f"{origin}: {len(data)} images but b'labels' has shape "
                              f"{labels.shape} ({labels.dtype})")
    if len(labels) and (labels.min() < 0 or labels.max() >= _CIFAR_CLASSES):
        raise CrowdlearnError(f"{origin}: labels must lie in [0, {_CIFAR_CLASSES}), found "
                              f"{labels.min()}..{labels.max()}")
    # rows are 1024 red, 1024 green, 1024 blue pixels (row-major 32 x 32): channels last
    x = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1).reshape(len(data), 3072)
    x = x.astype(np.float32)
    x /= np.float32(255.0)
    return x, labels.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _load_cifar_cached(source: str, stamp: tuple) -> Dataset:
    """Read CIFAR-10 from a checked source; ``stamp`` invalidates the cache on file change."""
    del stamp
    where = Path(source)
    try:
        raw = _cifar_read(where)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise CrowdlearnError(f"cannot read CIFAR-10 at {where}: {exc}") from exc
    missing = [n for n in CIFAR10_FILES if n not in raw]
    if missing:
        raise CrowdlearnError(f"{where}: {', '.join(missing)} could not be read")
    parts = {n: _cifar_batch(f"{where} ({n})", raw[n]) for n in CIFAR10_FILES}
    train = [parts[n] for n in CIFAR10_FILES[:-1]]
    x_train = np.concatenate([p[0] for p in train])
    y_train = np.concatenate([p[1] for p in train])
    x_test, y_test = parts["test_batch"]
    _readonly(x_train, y_train, x_test, y_test)
    return Dataset("cifar10", x_train, y_train, x_test, y_test, _CIFAR_CLASSES, _CIFAR_SHAPE,
                   "classification")


def _cifar_stamp(where: Path) -> tuple:
    files = [where] if where.is_file() else [where / n for n in CIFAR10_FILES]
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)


# --------------------------------------------------------------------------------------------
# public entry point


def load_dataset(name: str, *, path: str | os.PathLike | None = None, seed: int = 0,
                 standardise: str = "public") -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : str
        ``"digits"``, ``"breast_cancer"``, ``"diabetes"``, ``"fashion_mnist"`` or ``"cifar10"``
        (case-insensitive; ``-`` and ``_`` are interchangeable, so ``"fashion-mnist"`` works).
    path : str or os.PathLike, optional
        Fashion-MNIST only: a directory holding the four IDX files
        (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
        ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) or a Keras-style ``.npz`` with keys
        ``x_train, y_train, x_test, y_test``.  Without it the lookup tries
        ``$CROWDLEARN_FASHION_MNIST`` (same forms), ``/usr/share/datasets/fashion-mnist`` (Debian's
        ``dataset-fashion-mnist``), then the Keras cache ``~/.keras/datasets/fashion-mnist``
        (and ``$KERAS_HOME/datasets/fashion-mnist`` first if ``KERAS_HOME`` is set).
        CIFAR-10 (required): the ``cifar-10-batches-py`` directory of the official "python
        version" (``data_batch_1`` .. ``data_batch_5``, ``test_batch``: pickled dicts with
        ``b"data"``, uint8 N × 3072 rows of 1024 red, green, blue pixels, and ``b"labels"``) or
        its ``cifar-10-python.tar.gz``; no other place is searched and nothing is downloaded.
    seed : int, default 0
        Seed of the 75/25 train/test split of the scikit-learn sets (stratified for
        classification).  Fashion-MNIST keeps its official 60 000 / 10 000 split and ignores it.
    standardise : {"public", "train"}, default "public"
        Where ``breast_cancer`` and ``diabetes`` take the mean and std they are standardised
        with: ``"public"``, the held-out test part (declared public: no participant holds it),
        so that the preprocessing depends on no participant's row and a differentially private
        run's guarantee (e.g. the functional mechanism's "public constants only" scaling) covers
        everything done to those rows; ``"train"``, the training part (the usual ML practice,
        but the participants' rows then shape every row's scaling, outside any DP guarantee).
        The other sets are scaled by constants (1/16, 1/255) and ignore it.

    Returns
    -------
    Dataset
        Flat ``float32`` features with read-only arrays.  ``digits`` is scaled by 1/16 and has
        ``image_shape=(8, 8, 1)``; ``breast_cancer`` and ``diabetes`` are standardised
        (``standardise``; ``diabetes``' target too; it is a regression set with
        ``num_classes=0``); Fashion-MNIST pixels are scaled to [0, 1] with
        ``image_shape=(28, 28, 1)``; CIFAR-10 has 50 000 / 10 000 images, channels last
        (``image_shape=(32, 32, 3)``), pixels in [0, 1].  Fashion-MNIST and CIFAR-10 are
        cached in-process per source (about 200 and 740 MB), so repeated calls return the
        same object.

    Raises
    ------
    CrowdlearnError
        Unknown name, ``path`` given for a scikit-learn set, or a corrupt Fashion-MNIST file.
    DatasetNotFoundError
        Fashion-MNIST is absent, or ``path`` / ``$CROWDLEARN_FASHION_MNIST`` does not hold it;
        CIFAR-10's ``path`` is missing or lacks a batch file.

    Examples
    --------
    >>> from crowdlearn.data import load_dataset
    >>> ds = load_dataset("digits", seed=1)
    >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes, ds.image_shape
    ((1347, 64), (450, 64), 10, (8, 8, 1))
    >>> load_dataset("diabetes").task
    'regression'
    >>> fm = load_dataset("fashion-mnist")  # doctest: +SKIP
    >>> fm.x_train.shape, fm.x_test.shape  # doctest: +SKIP
    ((60000, 784), (10000, 784))
    """
    key = str(name).strip().lower().replace("-", "_")
    if key == "cifar10":
        why = cifar10_problem(path)
        if why:
            raise DatasetNotFoundError(f"CIFAR-10: {why}")
        where = Path(path).expanduser().resolve()
        return _load_cifar_cached(str(where), _cifar_stamp(where))
    if key == "fashion_mnist":
        source = _locate_fashion_mnist(path)
        return _load_fashion_cached(str(source), _stamp(source))
    if key not in _SKLEARN_LOADERS:
        raise CrowdlearnError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if path is not None:
        raise CrowdlearnError(
            f"dataset {key!r} ships with scikit-learn and takes no path (got {str(path)!r}); "
            "data.path only applies to fashion_mnist and cifar10"
        )
    if standardise not in STANDARDISE:
        raise CrowdlearnError(f"standardise must be one of {', '.join(STANDARDISE)}; got "
                              f"{standardise!r}")
    ds = _SKLEARN_LOADERS[key](int(seed), standardise)
    _readonly(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    return ds
