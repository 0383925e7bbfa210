"""The step's parameters: one definition each, shared by the Python API, command line and step.

Every imaging parameter of the reference step (jwst 3.0.0 ``OutlierDetectionStep``) keeps its
name, default and string form (``snr="5.0 4.0"``, ``good_bits="~DO_NOT_USE"``); the execution
parameters that follow them are this project's own. :func:`OutlierParameters.from_mapping` turns
strings (command line, parameter files) into typed values and validates every one of them, so a
bad value is reported before any data is read.

Each parameter is one field of :class:`OutlierParameters`: its name, type and default, and in
its metadata its meaning (with its choices, or what a default of ``None`` stands for). The help
of ``outlier-dask run``, the spec of :class:`~outlier_dask.OutlierDetectionDaskStep` and the
documentation's parameter table are all made from these fields (:data:`PARAMETER_HELP`,
:data:`PARAMETER_CHOICES`, :func:`parameter_default_text`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from astropy.nddata.bitmask import interpret_bit_flags
from stdatamodels.jwst.datamodels.dqflags import pixel as JWST_PIXEL_FLAGS  # noqa: N812

__all__ = [
    "PARAMETER_CHOICES",
    "PARAMETER_HELP",
    "OutlierParameters",
    "ParameterError",
    "not_a_parameter",
    "parameter_default_text",
    "parse_bool",
    "parse_memory_size",
]

KERNELS = ("square", "point", "turbo")
WEIGHT_TYPES = ("ivm", "exptime")
DETECTIONS = ("reference", "robust")

#: What ``detection`` stands for: the value of each piece of the rule that is not set
#: explicitly. ``reference`` is jwst 3.0.0's rule; ``robust`` is the set that won on
#: ``benchmarks/detection_quality.py`` (docs/detection.md).
DETECTION_PIECES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "reference": MappingProxyType({"nhigh_groups": 0, "source_fraction": 0.0}),
        "robust": MappingProxyType({"nhigh_groups": 2, "source_fraction": 0.2}),
    }
)
SCHEDULERS = ("processes", "threads", "synchronous", "local-cluster")


class ParameterError(ValueError):
    """A parameter value is of the wrong type or out of range; the message names it."""


def not_a_parameter(raw_name: str) -> str:
    """The message for a name that is no parameter, with the nearest parameter's name."""
    names = [f.name for f in fields(OutlierParameters) if f.init]
    close = difflib.get_close_matches(str(raw_name).replace("-", "_"), names, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{raw_name}: not a parameter of outlier detection{hint}"


def parse_bool(value: Any, name: str) -> bool:
    """Read a boolean the way ``strun`` does (``True``/``False``, also yes/no, 1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "t", "yes", "y", "1", "on"):
        return True
    if text in ("false", "f", "no", "n", "0", "off"):
        return False
    raise ParameterError(f"{name}: expected True or False, got {value!r}")


#: Size units as dask spells them: K, M, G, T (with or without B) decimal, Ki... (with or
#: without B) binary, in any case.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_memory_size(value: Any, name: str = "memory_limit") -> int:
    """Bytes from ``"1GiB"``, ``"800MB"``, ``"2.5 GB"`` or a number of bytes."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        text = str(value).strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        number_text, unit = digits, text[len(digits) :]
        try:
            number = float(number_text)
        except ValueError:
            raise ParameterError(
                f"{name}: cannot read {value!r} as a size (examples: '1GiB', '800MB')"
            ) from None
    if unit not in _SIZE_UNITS:
        raise ParameterError(f"{name}: unknown unit {unit!r} in {value!r} (use MB, GB, MiB, GiB)")
    size = number * _SIZE_UNITS[unit]
    if not math.isfinite(size) or size <= 0:
        raise ParameterError(f"{name}: must be a positive size, got {value!r}")
    return int(size)


def _two_floats(value: Any, name: str) -> tuple[float, float]:
    parts = value.split() if isinstance(value, str) else list(value)
    try:
        pair = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ParameterError(
            f"{name}: expected two numbers like '5.0 4.0', got {value!r}"
        ) from None
    if len(pair) != 2 or not all(math.isfinite(p) for p in pair):
        raise ParameterError(f"{name}: expected two finite numbers like '5.0 4.0', got {value!r}")
    return pair  # type: ignore[return-value]


def _number(value: Any, name: str, kind: type = float) -> float:
    if isinstance(value, bool):
        raise ParameterError(f"{name}: expected a number, got {value!r}")
    try:
        number = kind(value) if kind is float else int(str(value))
    except (TypeError, ValueError):
        raise ParameterError(f"{name}: expected a number, got {value!r}") from None
    if kind is float and not math.isfinite(number):
        raise ParameterError(f"{name}: must be finite, got {value!r}")
    return number


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ParameterError(f"{name}: must be one of {', '.join(choices)}; got {value!r}")
    return text


def _parameter(default: Any, meaning: str, *, choices: tuple[str, ...] = (), none: str = "") -> Any:
    """A field of :class:`OutlierParameters`: its default, and in its metadata its meaning.

    ``meaning`` (with the unit) is the text of ``outlier-dask run --help``, of the step's spec
    comment and of the documentation's parameter table; ``choices`` are the only values
    allowed, when there is a fixed list; ``none`` says what a default of ``None`` stands for.
    """
    return field(default=default, metadata={"help": meaning, "choices": choices, "none": none})


@dataclass(frozen=True)
class OutlierParameters:
    """All parameters of a run, validated.

    Parameters
    ----------
    weight_type : {"ivm", "exptime"}
        Drizzle weight per input pixel: inverse read-noise variance, or exposure time.
    pixfrac : float
        Drop size as a fraction of the input pixel, in (0, 1].
    kernel : {"square", "point", "turbo"}
        Drizzle kernel.
    fillval : str
        Value of mosaic pixels no input touches (``"NAN"``, ``"INDEF"`` or a number).
    maskpt : float
        Fraction (0–1) of the sigma-clipped mean weight below which mosaic pixels are ignored.
    snr : str
        Two signal-to-noise thresholds, first and second pass, e.g. ``"5.0 4.0"``.
    scale : str
        Two multipliers of the blot's derivative, first and second pass, e.g. ``"1.2 0.7"``.
    backg : float
        Background added to the blotted median, in the units of SCI.
    save_intermediate_results : bool
        Also write grouped mosaics, the median and the blots.
    resample_data : bool
        Drizzle exposure groups onto a common grid (True) or take the median of the inputs
        themselves, which must then share one shape (False).
    good_bits : str
        DQ bits treated as good (astropy bit-flag syntax; ``"~DO_NOT_USE"`` by default).
    in_memory : bool
        Keep mosaics and the median in memory (True) or in a Zarr store in ``work_dir``.
    pixmap_stepsize : float
        The reference's sparse pixel-map step; above 1, the pixel map is a spline through a grid
        with this step and no error check (as the reference does).
    pixmap_order : int
        Spline order (1 or 3) used with ``pixmap_stepsize > 1``.
    pixmap_tolerance : float
        With ``pixmap_stepsize == 1``: largest interpolation error of the pixel map allowed,
        in output pixels; 0 evaluates the WCS at every pixel.
    detection : {"reference", "robust"}
        The outlier rule: jwst 3.0.0's (``reference``, flags identical to it) or this
        project's rule for few overlapping exposures and undersampled stars (``robust``,
        opt-in; see docs/detection.md). It sets the pieces below that are left unset.
    nhigh_groups : int or None
        Reject the highest value before the median where at most this many groups (and at
        least two) cover a grid pixel; 0 never does (the reference).
    source_fraction : float or None
        Add this fraction of the blotted median's source level (above the background) to both
        flag thresholds; 0 is the reference.
    max_grid_pixels : float
        Largest output grid (``ny * nx``) a run may build; a bigger one usually means a bad
        WCS or ``S_REGION`` and is refused before any work.
    tls_ca_file, tls_cert, tls_key : str or None
        With a ``tls://`` scheduler address: the certificate authority to trust, and this
        client's certificate and private key (PEM files; the key may be inside the
        certificate file).
    """

    weight_type: str = _parameter(
        "ivm",
        "drizzle weight per input pixel: ivm (1/VAR_RNOISE) or exptime (seconds)",
        choices=WEIGHT_TYPES,
    )
    pixfrac: float = _parameter(1.0, "drop size as a fraction of an input pixel's side, in (0, 1]")
    kernel: str = _parameter("square", "drizzle kernel: square, point or turbo", choices=KERNELS)
    fillval: str = _parameter(
        "NAN", "value of mosaic pixels no input reaches: NAN, INDEF or a number (SCI units)"
    )
    maskpt: float = _parameter(
        0.7,
        "fraction (0-1) of a mosaic's sigma-clipped mean weight below which its pixels are ignored",
    )
    snr: str = _parameter(
        "5.0 4.0",
        "two signal-to-noise thresholds (multiples of ERR), first and second pass: 'first second'",
    )
    scale: str = _parameter(
        "1.2 0.7",
        "two multipliers of the blotted median's derivative, first and second pass: 'first second'",
    )
    backg: float = _parameter(0.0, "background added to the blotted median, in SCI units")
    save_intermediate_results: bool = _parameter(
        False, "also write the _outlier_i2d mosaics, the _median and the _blot images"
    )
    resample_data: bool = _parameter(
        True,
        "drizzle exposure groups onto a common grid (False: median of the inputs as they are; "
        "they must share one shape)",
    )
    good_bits: str = _parameter(
        "~DO_NOT_USE", "DQ bits treated as good (astropy bit-flag syntax, JWST flag names allowed)"
    )
    in_memory: bool = _parameter(
        True, "keep mosaics and median in memory (False: a Zarr store under work_dir)"
    )
    pixmap_stepsize: float = _parameter(
        1.0, "the reference's sparse pixel-map step, input pixels (1: checked spline)"
    )
    pixmap_order: int = _parameter(
        1, "spline order (1 or 3) of the pixel map with pixmap_stepsize > 1"
    )
    pixmap_tolerance: float = _parameter(
        1e-4,
        "largest pixel-map interpolation error allowed, output pixels (0: evaluate the WCS at "
        "every pixel)",
    )
    detection: str = _parameter(
        "reference",
        "outlier rule: reference (jwst 3.0.0's, identical flags) or robust (opt-in: for few "
        "overlapping exposures and undersampled stars); sets nhigh_groups and source_fraction "
        "where they are not given",
        choices=DETECTIONS,
    )
    nhigh_groups: int | None = _parameter(
        None,
        "reject the highest value before the median where 2 to this many groups cover a "
        "grid pixel (0: never, as the reference)",
        none="0 (reference) or 2 (robust), from detection",
    )
    source_fraction: float | None = _parameter(
        None,
        "fraction of the blotted source level (above background) added to both flag "
        "thresholds (0: as the reference)",
        none="0 (reference) or 0.2 (robust), from detection",
    )
    # execution
    output_dir: str = _parameter(".", "folder for the products, the report and the figure")
    suffix: str = _parameter("crf", "product suffix: <stem>_<suffix>.fits")
    work_dir: str | None = _parameter(
        None,
        "parent folder (or fsspec URL, e.g. s3://bucket/prefix) of this run's scratch folder, "
        "which is removed at the end",
        none="system temporary folder",
    )
    scheduler: str = _parameter(
        "processes",
        "processes, threads, synchronous, local-cluster, or a scheduler address tcp://host:port",
    )
    n_workers: int | None = _parameter(
        None,
        "parallel workers (processes, threads or local-cluster workers)",
        none="CPUs available",
    )
    threads_per_worker: int = _parameter(1, "threads per worker with local-cluster")
    memory_limit: str | None = _parameter(
        None,
        "memory budget of the run, bytes or e.g. 4GiB, 4G, 800MB: workers, tiles and in_memory "
        "follow from it",
        none="half of this machine's memory",
    )
    tile_size: int = _parameter(1024, "tile edge of the mosaics and the median, output pixels")
    block_size: int = _parameter(1024, "block edge of the per-input blot and compare, input pixels")
    overwrite: bool = _parameter(False, "replace existing products, report and figure")
    max_grid_pixels: float = _parameter(
        2e9, "largest output grid allowed, pixels (a bigger one is refused)"
    )
    tls_ca_file: str | None = _parameter(
        None, "with a tls:// scheduler: certificate authority to trust (PEM)"
    )
    tls_cert: str | None = _parameter(
        None, "with a tls:// scheduler: this client's certificate (PEM)"
    )
    tls_key: str | None = _parameter(
        None, "with a tls:// scheduler: this client's private key (PEM)"
    )
    snr_pair: tuple[float, float] = field(init=False, repr=False, compare=False)
    scale_pair: tuple[float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Validate every value; raise :class:`ParameterError` naming the first bad one."""
        object.__setattr__(self, "snr_pair", _two_floats(self.snr, "snr"))
        object.__setattr__(self, "scale_pair", _two_floats(self.scale, "scale"))
        for name, choices in PARAMETER_CHOICES.items():
            _choice(getattr(self, name), name, choices)
        object.__setattr__(self, "detection", _choice(self.detection, "detection", DETECTIONS))
        if not 0.0 < self.pixfrac <= 1.0:
            raise ParameterError(f"pixfrac: must be in (0, 1], got {self.pixfrac!r}")
        if not 0.0 <= self.maskpt <= 1.0:
            raise ParameterError(f"maskpt: must be in [0, 1], got {self.maskpt!r}")
        fill = str(self.fillval).strip().upper()
        if fill not in ("NAN", "INDEF", ""):
            try:
                float(fill)
            except ValueError:
                raise ParameterError(
                    f"fillval: expected 'NAN', 'INDEF' or a number, got {self.fillval!r}"
                ) from None
        try:
            interpret_bit_flags(self.good_bits, flag_name_map=JWST_PIXEL_FLAGS)
        except (TypeError, ValueError, KeyError) as exc:
            raise ParameterError(
                f"good_bits: cannot read {self.good_bits!r} ({exc}); use DQ bit values or "
                "JWST flag names, e.g. '~DO_NOT_USE' or '4,JUMP_DET'"
            ) from None
        if self.nhigh_groups is not None and self.nhigh_groups < 0:
            raise ParameterError(f"nhigh_groups: must be >= 0 groups, got {self.nhigh_groups!r}")
        if self.source_fraction is not None and not 0.0 <= self.source_fraction <= 10.0:
            raise ParameterError(
                f"source_fraction: must be in [0, 10], got {self.source_fraction!r}"
            )
        if self.pixmap_stepsize < 1:
            raise ParameterError(f"pixmap_stepsize: must be >= 1, got {self.pixmap_stepsize!r}")
        if self.pixmap_order not in (1, 3):
            raise ParameterError(f"pixmap_order: must be 1 or 3, got {self.pixmap_order!r}")
        if not 0.0 <= self.pixmap_tolerance < 0.5:
            raise ParameterError(
                "pixmap_tolerance: must be in [0, 0.5) output pixels, "
                f"got {self.pixmap_tolerance!r}"
            )
        if not self.suffix or any(c in self.suffix for c in "/\\ ."):
            raise ParameterError(f"suffix: must be a plain word like 'crf', got {self.suffix!r}")
        if self.scheduler not in SCHEDULERS and not str(self.scheduler).startswith(
            ("tcp://", "tls://", "ucx://", "inproc://")
        ):
            raise ParameterError(
                f"scheduler: must be one of {', '.join(SCHEDULERS)} or an address like "
                f"tcp://host:8786; got {self.scheduler!r}"
            )
        if self.n_workers is not None and self.n_workers < 1:
            raise ParameterError(f"n_workers: must be >= 1, got {self.n_workers!r}")
        if self.threads_per_worker < 1:
            raise ParameterError(
                f"threads_per_worker: must be >= 1, got {self.threads_per_worker!r}"
            )
        if self.memory_limit is not None:
            parse_memory_size(self.memory_limit)
        for name in ("tile_size", "block_size"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name}: must be >= 1 pixel, got {getattr(self, name)!r}")
        if not math.isfinite(self.max_grid_pixels) or self.max_grid_pixels < 4:
            raise ParameterError(
                f"max_grid_pixels: must be a number of pixels >= 4, got {self.max_grid_pixels!r}"
            )
        tls = [n for n in ("tls_ca_file", "tls_cert", "tls_key") if getattr(self, n) is not None]
        if tls and not str(self.scheduler).startswith("tls://"):
            raise ParameterError(
                f"{tls[0]}: TLS files need a tls://host:port scheduler address; "
                f"got scheduler={self.scheduler!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> OutlierParameters:
        """Build from names and values that may be strings (command line, parameter files).

        Unknown names raise :class:`ParameterError`; dash and underscore spellings are equal.
        """
        converters = _converters()
        typed: dict[str, Any] = {}
        for raw_name, value in values.items():
            name = raw_name.replace("-", "_")
            if name not in converters:
                raise ParameterError(not_a_parameter(raw_name))
            typed[name] = None if value is None else converters[name](value, name)
        return cls(**typed)

    def replace(self, **changes: Any) -> OutlierParameters:
        """A copy with some values changed (and validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def flag_values(self) -> dict[str, Any]:
        """The value of each of :data:`FLAG_PARAMETERS`, the detection pieces resolved."""
        return {
            name: self.detection_piece(name)
            if name in DETECTION_PIECES[self.detection]
            else getattr(self, name)
            for name in FLAG_PARAMETERS
        }

    def detection_piece(self, name: str) -> Any:
        """The value of one piece of the outlier rule: set explicitly, or from ``detection``."""
        value = getattr(self, name)
        return DETECTION_PIECES[self.detection][name] if value is None else value

    @property
    def good_bits_value(self) -> int | None:
        """``good_bits`` as the integer bit mask it denotes (``None``: DQ is ignored)."""
        return interpret_bit_flags(self.good_bits, flag_name_map=JWST_PIXEL_FLAGS)

    @property
    def step_parameters(self) -> dict[str, Any]:
        """The reference step's imaging parameters, with the reference's names and string forms."""
        return {name: getattr(self, name) for name in REFERENCE_PARAMETERS}


REFERENCE_PARAMETERS = (
    "weight_type",
    "pixfrac",
    "kernel",
    "fillval",
    "maskpt",
    "snr",
    "scale",
    "backg",
    "save_intermediate_results",
    "resample_data",
    "good_bits",
    "in_memory",
    "pixmap_stepsize",
    "pixmap_order",
)

#: The parameters the flags depend on (what a product records of the run that made it): the
#: reference's flag parameters, the pixel map's and this project's detection rule.
FLAG_PARAMETERS = (
    "weight_type",
    "pixfrac",
    "kernel",
    "fillval",
    "maskpt",
    "snr",
    "scale",
    "backg",
    "resample_data",
    "good_bits",
    "pixmap_stepsize",
    "pixmap_order",
    "pixmap_tolerance",
    "detection",
    "nhigh_groups",
    "source_fraction",
)

#: The parameters of a run by name: the init fields of :class:`OutlierParameters`, in order.
_FIELDS = {f.name: f for f in fields(OutlierParameters) if f.init}

#: What each parameter means, with its unit (from the fields' metadata): the text of
#: ``outlier-dask run --help``, of the step's spec comments and of the documentation's table.
PARAMETER_HELP: Mapping[str, str] = MappingProxyType(
    {name: f.metadata["help"] for name, f in _FIELDS.items()}
)

#: The parameters that take one of a fixed list of values, and the list.
PARAMETER_CHOICES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {name: f.metadata["choices"] for name, f in _FIELDS.items() if f.metadata["choices"]}
)


def parameter_default_text(name: str) -> str:
    """The default of a parameter as the command line and the docs show it.

    A default of ``None`` reads as what it stands for (``"CPUs available"``), or ``"not set"``.
    """
    f = _FIELDS[name]
    if f.default is None:
        return f.metadata["none"] or "not set"
    return str(f.default)


def _as_str(value: Any, name: str) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def _converters() -> dict[str, Any]:
    by_type = {
        "float": lambda v, n: _number(v, n, float),
        "int": lambda v, n: _number(v, n, int),
        "bool": parse_bool,
        "str": _as_str,
        "str | None": _as_str,
        "int | None": lambda v, n: _number(v, n, int),
        "float | None": lambda v, n: _number(v, n, float),
    }
    return {f.name: by_type[f.type] for f in fields(OutlierParameters) if f.init}
