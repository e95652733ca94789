"""Streaming readers for delimited and JSON Lines files that report problems by file, row and line.

Shared by the GLUE and custom loaders so both read TSV the same way: quoting off, because GLUE sentences contain
unbalanced ``"`` characters and default CSV quoting silently merges rows. Files are read line by line in binary and
decoded per line, so a bad byte is reported with its line number and a size guard stops before the whole file is
read.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _csv import Reader

from tasks.errors import DataError


@dataclass(frozen=True)
class Row:
    """One data row: ``number`` counts data rows from 1 (header and blank lines excluded), ``line`` is where it
    starts in the file, also from 1."""

    number: int
    line: int
    cells: list[str]

    def where(self, path: Path) -> str:
        """Location prefix for messages about this row."""
        return f"{path}: row {self.number} (line {self.line})"


def check_file(path: Path) -> None:
    """Raise a clear error for a path that is missing or not a regular file, before any parsing."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")


def decoded_lines(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 file with line endings kept (csv needs them); a leading BOM is dropped because spreadsheet
    exports add one and it would otherwise end up in the first column name."""
    check_file(path)
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.start + 1].hex()
                raise DataError(
                    f"{path}: line {line_no}: not valid UTF-8 (byte 0x{bad} at column {err.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            if line_no == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield line


def read_delimited(
    path: Path, *, delimiter: str, quoted: bool, has_header: bool = True, max_rows: int | None = None
) -> tuple[list[str] | None, Iterator[Row]]:
    """Return ``(header, rows)``; ``header`` is None for headerless files.

    ``quoted`` selects normal CSV quoting; off, a ``"`` is an ordinary character (GLUE-style TSV).

    Every row must have as many fields as the header (or as the first row, without a header): a short or long row
    almost always means a stray delimiter or quote, and mapping its cells by position would mislabel data silently.
    """
    lines = decoded_lines(path)
    if quoted:
        reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, strict=True)
    else:
        reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE, strict=True)
    header: list[str] | None = None
    if has_header:
        try:
            header = next(reader, None)
            while header == []:  # blank lines before the header
                header = next(reader, None)
        except csv.Error as err:
            raise DataError(f"{path}: line {reader.line_num}: cannot parse the header: {err}") from None
        if header is None:
            raise DataError(f"{path}: file is empty (a header row is required)")
        header = [name.strip() for name in header]
    return header, _rows(path, reader, header, max_rows)


def _rows(path: Path, reader: Reader, header: list[str] | None, max_rows: int | None) -> Iterator[Row]:
    width = None if header is None else len(header)
    number = 0
    next_line = reader.line_num + 1
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as err:
            raise DataError(f"{path}: line {reader.line_num}: cannot parse: {err}") from None
        if cells is None:
            return
        start, next_line = next_line, reader.line_num + 1
        if not cells:
            continue  # a blank line (often the last one) is not a row
        number += 1
        row = Row(number, start, cells)
        if max_rows is not None and number > max_rows:
            raise DataError(f"{path}: more than {max_rows} data rows (the limit for one file)")
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            expected = "the header" if header is not None else "the first row"
            raise DataError(f"{row.where(path)}: has {len(cells)} fields but {expected} has {width}")
        yield row


def read_json_lines(path: Path, *, max_rows: int | None = None) -> Iterator[tuple[int, dict[str, object]]]:
    """Yield ``(line_number, object)`` for each non-blank line; every line must hold one JSON object."""
    number = 0
    for line_no, line in enumerate(decoded_lines(path), start=1):
        if not line.strip():
            continue
        number += 1
        if max_rows is not None and number > max_rows:
            raise DataError(f"{path}: more than {max_rows} data rows (the limit for one file)")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}: line {line_no}: invalid JSON ({err.msg} at column {err.colno}); "
                "expected one JSON object per line (JSON Lines)"
            ) from None
        if not isinstance(value, dict):
            raise DataError(
                f"{path}: line {line_no}: expected a JSON object ({{...}}) per line, got {type(value).__name__}"
            )
        yield line_no, value
