"""Reads a bufscope Parquet export with pyarrow (an independent reader) and prints a JSON
summary: the schema, row counts per kind, and a few aggregates the tests check against the
trace."""

import json
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq


def main(path):
    table = pq.read_table(path)
    kinds = pc.value_counts(table["kind"]).to_pylist()
    waits = table.filter(pc.equal(table["kind"], "lock_wait"))
    mutex = waits.filter(pc.equal(waits["lock_class"], "client mutex"))
    ops = table.filter(pc.equal(table["kind"], "bufio_op"))
    print(json.dumps({
        "columns": table.column_names,
        "types": [str(t) for t in table.schema.types],
        "rows": table.num_rows,
        "kinds": {k["values"]: k["counts"] for k in kinds},
        "mutex_waits": mutex.num_rows,
        "mutex_wait_total_ns": pc.sum(mutex["duration_ns"]).as_py() or 0,
        "op_blocks_max": pc.max(ops["block"]).as_py() if ops.num_rows else None,
        "null_blocks_in_waits": waits["block"].null_count,
        "devices": sorted(set(d for d in ops["device"].to_pylist() if d)),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
