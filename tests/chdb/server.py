"""ClickHouse's HTTP interface over a chdb session, for the Rust tests.

chdb is current ClickHouse embedded in a Python module (PyPI `chdb-core`,
installed by scripts/install-chdb.sh). It has no server of its own, so this
file serves one chdb session on 127.0.0.1 with as much of ClickHouse's HTTP
interface as the `clickhouse` crate uses, and tests/pipeline/chdb.rs points
the project's own `Store` at it: the migrations, the fenced RowBinary
inserts, the rollups and every query then run unchanged on current
ClickHouse.

    python server.py <session directory>

The first line on stdout is {"port": <port>, "version": "<engine version>",
"timezone": "<server time zone>"}, once the session is open and the port
listens. It exits when its stdin closes (the test ended or died).

What it understands of a request (POST, body plain or chunked):
- `query` in the URL: the statement, and the body its data (an INSERT ...
  FORMAT <format>: the data is written to a file and inserted with
  INSERT ... FROM INFILE); otherwise the body is the statement;
- `database`: the session's current database for the statement;
- `default_format`: the output format (TabSeparated when absent).
Other settings (query_id, ...) are ignored; compression is not supported.
An engine error is answered 500 with ClickHouse's message, as the server does.
It decides nothing: the Rust side sends the statements and checks the answers.
"""

import http.server
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.parse

# The data of an INSERT comes in the body: the statement must end in FORMAT <name>.
INSERT_WITH_DATA = re.compile(
    r"^\s*(?P<head>INSERT\s+INTO\s+.+?)\s+FORMAT\s+(?P<format>\w+)\s*$", re.S | re.I
)
# ClickHouse's messages start with "Code: <number>.".
ERROR_CODE = re.compile(r"Code: (\d+)\.")


class ChdbServer(http.server.ThreadingHTTPServer):
    """One chdb session, one statement at a time."""

    daemon_threads = True

    def __init__(self, session_dir: str):
        super().__init__(("127.0.0.1", 0), Handler)
        from chdb import session

        self.session = session.Session(session_dir)
        self.data_dir = tempfile.mkdtemp(prefix="insert-data-", dir=session_dir)
        self.lock = threading.Lock()
        self.inserts = 0

    def run(self, params: dict, body: bytes) -> bytes:
        sql = params.get("query")
        data = None
        if sql is None:
            sql = body.decode("utf-8")
        elif body:
            data = body
        with self.lock:
            if data is not None:
                sql = self.insert_from_file(sql, data)
            database = params.get("database") or "default"
            self.session.query("USE `" + database.replace("`", "") + "`")
            output_format = params.get("default_format") or "TabSeparated"
            return self.session.query(sql, output_format).bytes()

    def insert_from_file(self, sql: str, data: bytes) -> str:
        match = INSERT_WITH_DATA.match(sql)
        if match is None:
            raise ValueError("Code: 62. data in the body of a statement that is no INSERT ... FORMAT")
        self.inserts += 1
        path = os.path.join(self.data_dir, "insert-%d.%s" % (self.inserts, match["format"]))
        with open(path, "wb") as file:
            file.write(data)
        return "%s FROM INFILE '%s' FORMAT %s" % (match["head"], path, match["format"])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ChdbServer

    def do_POST(self) -> None:
        self.answer(self.read_body())

    def do_GET(self) -> None:
        self.answer(b"")

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                # Trailers, if any, end with an empty line.
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def answer(self, body: bytes) -> None:
        query = urllib.parse.urlsplit(self.path).query
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        if not params and not body:
            # GET / is ClickHouse's ping.
            self.reply(200, b"Ok.\n")
            return
        try:
            self.reply(200, self.server.run(params, body))
        except Exception as error:  # every engine error goes back as the server's answer
            message = str(error)
            code = ERROR_CODE.search(message)
            self.reply(500, (message + "\n").encode(), code[1] if code else "1000")

    def reply(self, status: int, output: bytes, error_code: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        if error_code:
            self.send_header("X-ClickHouse-Exception-Code", error_code)
        self.send_header("Content-Length", str(len(output)))
        self.end_headers()
        self.wfile.write(output)

    def log_message(self, format: str, *args) -> None:
        pass


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: server.py <session directory>", file=sys.stderr)
        return 2
    # Times print in UTC, as on the testkit's clickhouse-server.
    os.environ["TZ"] = "UTC"
    time.tzset()
    server = ChdbServer(sys.argv[1])
    version, timezone = (
        server.session.query("SELECT version(), timezone()", "TabSeparated")
        .bytes()
        .decode()
        .strip()
        .split("\t")
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ready = {"port": server.server_address[1], "version": version, "timezone": timezone}
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    # The test holds stdin open for as long as it needs the server.
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
