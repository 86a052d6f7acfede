"""Reading and writing the CSV and Parquet files the CLI takes and makes (user errors as one line)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from streamquant.errors import UserError


def read_table(path: Path) -> pa.Table:
    """A CSV or Parquet file, with a timestamp `ts` column (if any) as epoch milliseconds."""
    if not path.exists():
        raise UserError(f"file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path)
        elif path.suffix.lower() == ".csv":
            table = pacsv.read_csv(path)
        else:
            raise UserError(f"{path}: expected a .csv or .parquet file")
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if "ts" in table.column_names and pa.types.is_timestamp(table.schema.field("ts").type):
        ms = table.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
        table = table.set_column(table.column_names.index("ts"), "ts", ms)
    return table


def write_table(table: pa.Table, path: Path) -> None:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            pq.write_table(table, path)
        elif path.suffix.lower() == ".csv":
            pacsv.write_csv(table, path)
        else:
            raise UserError(f"{path}: the output must end in .csv or .parquet")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}") from None
