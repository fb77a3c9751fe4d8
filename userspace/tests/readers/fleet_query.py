"""Runs a DuckDB query (the README's, over a fleet's Parquet exports) in the current directory
and prints its result as JSON: the column names and the rows, in the query's order."""

import json
import sys

import duckdb


def main(query):
    result = duckdb.sql(query)
    print(json.dumps({
        "columns": result.columns,
        "rows": [list(row) for row in result.fetchall()],
    }))


if __name__ == "__main__":
    main(sys.argv[1])
