"""The fuzzing contract and its mutation strategies (issue 16, part 6).

Contract, checked by :func:`check` for every case: a parser fed a damaged or hostile file either returns or
raises one of our own errors (:class:`~morphable.errors.MorphableError`) whose message is one line naming
the file; never another exception (``IndexError``, ``struct.error``, ``UnicodeDecodeError``,
``MemoryError``...; nor a numpy ``RuntimeWarning``, which would print), never a hang (a per-case alarm
besides hypothesis's deadline), never a huge allocation (each case runs under an address-space limit, so a
header that makes the parser allocate gigabytes fails as a ``MemoryError``, a foreign exception; the
"10^12 values" tests also measure the peak with ``tracemalloc``).

Cases are mutations of real files (:func:`mutated`: byte flips, truncations, inserted and deleted bytes or
lines, special numbers written over numeric fields and text tokens: NaN, inf, huge counts, negative
sizes) and generated ones (each test module's grammar strategies).

How many: ``MORPHABLE_FUZZ_EXAMPLES`` cases per property (default :data:`DEFAULT_EXAMPLES`, what CI runs,
derandomised so every run tries the same cases); ``make fuzz`` sets it much higher. :data:`STATS` counts
cases, accepted and rejected files and foreign exceptions per parser; ``tests/fuzz/conftest.py`` prints
the table (and writes it to ``MORPHABLE_FUZZ_REPORT`` as JSON when set).
"""
from __future__ import annotations

import os
import re
import resource
import signal
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Verbosity, settings
from hypothesis import strategies as st

from morphable.errors import MorphableError

DEFAULT_EXAMPLES = 40
EXAMPLES = int(os.environ.get("MORPHABLE_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
CASE_TIMEOUT_S = float(os.environ.get("MORPHABLE_FUZZ_TIMEOUT", "30"))
MEMORY_BUDGET = 1 << 30  # bytes of address space a case may add (beyond 64x the file's size)

STATS: dict[str, Counter] = defaultdict(Counter)


def fuzz_settings(share: float = 1.0, deadline_s: float = 10.0) -> settings:
    """Hypothesis settings: ``share`` of :data:`EXAMPLES` cases (at least 5), derandomised, a deadline;
    quiet, since the seeds are megabytes: a failing case is kept as a file instead (:func:`check`)."""
    return settings(max_examples=max(5, int(EXAMPLES * share)), derandomize=True, database=None,
                    deadline=timedelta(seconds=deadline_s), print_blob=False, verbosity=Verbosity.quiet,
                    suppress_health_check=list(HealthCheck))


class Hang(BaseException):
    """A case ran past :data:`CASE_TIMEOUT_S` (a ``BaseException``, so no parser's ``except Exception``
    can turn it into an ordinary error)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang(f"no answer within {CASE_TIMEOUT_S} s")


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def check(parser: str, parse: Callable[[Path], Any], path: Path, name_in_message: str | None = None) -> Any:
    """Run ``parse(path)`` under the contract; count the outcome in ``STATS[parser]``.

    Returns the parser's result (``None`` when it raised our error). Raises ``AssertionError`` for a
    foreign exception, a hang, or an error message that is not one line naming ``name_in_message``
    (default: the file's name).
    """
    stats = STATS[parser]
    stats["cases"] += 1
    size = path.stat().st_size if path.is_file() else 0
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + MEMORY_BUDGET + 64 * size
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (min(limit, hard) if hard != resource.RLIM_INFINITY else limit, hard))
        try:
            with warnings.catch_warnings():  # a user's file must not make numpy print warnings either
                warnings.simplefilter("error", RuntimeWarning)
                result = parse(path)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except MorphableError as err:
        stats["rejected"] += 1
        message, name = str(err), name_in_message or path.name
        if "\n" in message or name not in message:
            stats["foreign"] += 1
            raise AssertionError(f"{parser}: error message is not one line naming {name}: {message!r} "
                                 f"(case kept as {_keep(path)})") from err
        return None
    except BaseException as err:  # noqa: BLE001 - the point is to catch everything else
        if isinstance(err, KeyboardInterrupt):
            raise
        stats["foreign"] += 1
        kept = _keep(path)
        raise AssertionError(f"{parser}: foreign exception {type(err).__name__}: {err} (case kept as {kept})") from err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    stats["accepted"] += 1
    return result


def _keep(path: Path) -> Path:
    """Copy a failing case to ``MORPHABLE_FUZZ_FAILURES`` (default: the system's temp folder); hypothesis
    replays the minimal case last, so the copy left is the minimal one."""
    folder = Path(os.environ.get("MORPHABLE_FUZZ_FAILURES") or Path(tempfile.gettempdir()) / "morphable-fuzz-failures")
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / path.name
    kept.write_bytes(path.read_bytes() if path.is_file() else b"")
    return kept


# --- special values ---------------------------------------------------------------------------------
TEXT_NUMBERS = (b"nan", b"-nan", b"NaN", b"inf", b"-inf", b"Infinity", b"1e308", b"-1e308", b"1e400", b"0", b"-0",
                b"-1", b"1", b"2", b"3", b"4294967295", b"4294967296", b"2147483648", b"9223372036854775807",
                b"18446744073709551616", b"1000000000000", b"-1000000000000", b"1e-320", b"0.5", b"", b"x",
                b"0x10", b"1,5", b"--1", b"1e", b"\xff\xfe", b"\x00", b"99999999999999999999999999")
INTS = (0, 1, 2, 3, -1, -2, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, -2**31, 2**32 - 1, 2**32, 2**40, 10**12,
        2**53, 2**62, 2**63 - 1, -2**63)
FLOATS = (float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 1e38, 3.5e38, 0.0, -0.0, 1e-45, 1.0, -1.0)
_NUMBER = re.compile(rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf", re.IGNORECASE)


# --- mutation operators: each takes hypothesis's draw and the bytes ---------------------------------------
def _position(draw, data: bytearray, end: bool = False) -> int:
    """A position, biased towards the first 512 bytes (headers) half of the time."""
    top = len(data) if end else max(len(data) - 1, 0)
    head = min(top, 512)
    return draw(st.one_of(st.integers(0, head), st.integers(0, top)))


def _flip(draw, data: bytearray) -> bytearray:
    if data:
        for _ in range(draw(st.integers(1, 8))):
            data[_position(draw, data)] = draw(st.integers(0, 255))
    return data


def _truncate(draw, data: bytearray) -> bytearray:
    return data[:_position(draw, data, end=True)]


def _insert(draw, data: bytearray) -> bytearray:
    pos = _position(draw, data, end=True)
    data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
    return data


def _delete(draw, data: bytearray) -> bytearray:
    pos = _position(draw, data, end=True)
    del data[pos:pos + draw(st.integers(1, 64))]
    return data


def _duplicate(draw, data: bytearray) -> bytearray:
    pos = _position(draw, data, end=True)
    chunk = data[pos:pos + draw(st.integers(1, 256))]
    at = _position(draw, data, end=True)
    data[at:at] = chunk
    return data


def _binary_int(draw, data: bytearray) -> bytearray:
    """A special integer (a huge or negative count or size) written over 1, 2, 4 or 8 bytes."""
    if not data:
        return data
    width = draw(st.sampled_from((1, 2, 4, 8)))
    value = draw(st.sampled_from(INTS)) % (1 << (8 * width))
    order = draw(st.sampled_from("<>"))
    pos = _position(draw, data)
    data[pos:pos + width] = value.to_bytes(width, "little" if order == "<" else "big")
    return data


def _binary_float(draw, data: bytearray) -> bytearray:
    if not data:
        return data
    fmt = draw(st.sampled_from(("<f4", "<f8", ">f4", ">f8")))
    pos = _position(draw, data)
    with np.errstate(over="ignore"):  # 1e308 as float32 is inf
        value = np.array([draw(st.sampled_from(FLOATS))], dtype=fmt).tobytes()
    data[pos:pos + len(value)] = value
    return data


def _line_bounds(data: bytearray, pos: int) -> tuple[int, int]:
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    return start, (len(data) if end < 0 else end + 1)


def _text_number(draw, data: bytearray) -> bytearray:
    """A number token (the first one after a random position) replaced by a special value."""
    base = _position(draw, data, end=True)
    match = _NUMBER.search(bytes(data[base:base + 4096]))
    if match is None:
        base, match = 0, _NUMBER.search(bytes(data[:4096]))
    if match is None:
        return data
    data[base + match.start():base + match.end()] = draw(st.sampled_from(TEXT_NUMBERS))
    return data


def _line_delete(draw, data: bytearray) -> bytearray:
    a, b = _line_bounds(data, _position(draw, data))
    del data[a:b]
    return data


def _line_duplicate(draw, data: bytearray) -> bytearray:
    a, b = _line_bounds(data, _position(draw, data))
    line = data[a:b]
    at, _ = _line_bounds(data, _position(draw, data))
    data[at:at] = line
    return data


def _line_insert(draw, data: bytearray) -> bytearray:
    """A line made of tokens copied from the file and special numbers."""
    words = [w for w in bytes(data[:65536]).split()[:2000]] or [b"x"]
    tokens = draw(st.lists(st.one_of(st.sampled_from(words), st.sampled_from(TEXT_NUMBERS)), max_size=8))
    at, _ = _line_bounds(data, _position(draw, data))
    data[at:at] = b" ".join(tokens) + b"\n"
    return data


BINARY_OPS = (_flip, _truncate, _insert, _delete, _duplicate, _binary_int, _binary_float)
TEXT_OPS = (_flip, _truncate, _insert, _delete, _text_number, _text_number, _line_delete, _line_duplicate,
            _line_insert)


@st.composite
def mutated(draw, seed: bytes, text: bool = False, max_ops: int = 4) -> bytes:
    """``seed`` with 1 to ``max_ops`` mutations (text files also get line and number-token mutations)."""
    data = bytearray(seed)
    ops = TEXT_OPS if text else BINARY_OPS
    for _ in range(draw(st.integers(1, max_ops))):
        data = draw(st.sampled_from(ops))(draw, data)
    return bytes(data)


def numbers() -> st.SearchStrategy[str]:
    """Number-like text tokens for generated files."""
    return st.one_of(st.sampled_from([t.decode("latin-1") for t in TEXT_NUMBERS]),
                     st.integers(-2**64, 2**64).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr))


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path
