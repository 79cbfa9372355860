#!/usr/bin/env python3
"""A strict client of GET /v1/probes/NAME/events for the integration tests.

Standard library only, a raw socket and its own HTTP/1.1 parsing (chunked bodies
included), so that a test controls what urllib would hide: the receive buffer, a client
that reads nothing for a while, a disconnect in the middle of a stream.

Output, one JSON object per line, flushed as it arrives:
- SSE: each event as {"id": seq or null, "event": kind, "data": {...}} (data parsed as
  JSON); a comment as {"comment": "keep-alive"}; a retry field as {"retry": 2000}.
- NDJSON: each line's object as it is.
- A status other than 200: {"status": N, "body": <JSON if it parses, else text>}.
- Last: {"client": "closed", "reason": R, "events": N, "missed": M}, where N counts the
  data events (kind other than gap, end and keep-alive), M the sum of the gaps, and R is
  end (with "end": the end reason), stop-after, timeout, eof (the body or the connection
  ended without an end record), http-status, protocol-error or connect-error (with
  "detail").

Exit status: 0 after an end record followed by the end of the body, or after
--stop-after; 1 on a protocol error, a body without an end record, or no connection;
2 on --timeout; 3 on a status other than 200.
"""
import argparse
import json
import socket
import sys
import time
import urllib.parse

DATA_KINDS_EXCLUDED = ("gap", "end", "keep-alive")


class ProtocolError(Exception):
    pass


class Timeout(Exception):
    pass


class EOF(Exception):
    pass


class Connection:
    """A socket read with an overall deadline."""

    def __init__(self, sock, deadline):
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""

    def _fill(self):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout()
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout()
        except ConnectionResetError:
            raise EOF("connection reset")
        if not data:
            raise EOF("connection closed")
        self.buffer += data

    def line(self):
        """One line ending in CRLF, without it."""
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > 65536:
                raise ProtocolError("header line longer than 64 KiB")
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def some(self):
        if not self.buffer:
            self._fill()
        data, self.buffer = self.buffer, b""
        return data


def read_head(conn):
    status_line = conn.line().decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {status_line!r}")
    headers = {}
    while True:
        line = conn.line().decode("latin-1")
        if line == "":
            return int(parts[1]), headers
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"bad header line {line!r}")
        headers.setdefault(name.lower(), []).append(value.strip())


def body_pieces(conn, headers):
    """The body's bytes as they arrive, whatever its framing."""
    encoding = ",".join(headers.get("transfer-encoding", [])).lower()
    if encoding:
        if [e.strip() for e in encoding.split(",")] != ["chunked"]:
            raise ProtocolError(f"unexpected Transfer-Encoding {encoding!r}")
        while True:
            size_line = conn.line().decode("latin-1")
            size_text = size_line.split(";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {size_line!r}")
            if size_text.startswith(("-", "+", "0x", "0X")):
                raise ProtocolError(f"bad chunk size line {size_line!r}")
            if size == 0:
                while conn.line() != b"":
                    pass
                return
            data = conn.exact(size)
            if conn.exact(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            yield data
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"][0])
        except ValueError:
            raise ProtocolError(f"bad Content-Length {headers['content-length'][0]!r}")
        if length:
            yield conn.exact(length)
    else:
        while True:
            try:
                yield conn.some()
            except EOF:
                return


def lines_of(pieces):
    """Lines of the body (LF or CRLF endings); a last line without an ending is an error."""
    pending = b""
    for piece in pieces:
        pending += piece
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                yield line.removesuffix(b"\r").decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(f"line is not UTF-8: {line[:80]!r}")
    if pending:
        raise ProtocolError(f"body ends inside a line: {pending[:80]!r}")


def sse_items(lines):
    """The Server-Sent Events dispatched by the lines, and comments and retry fields."""
    event_id, kind, data = None, None, []
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    parsed = json.loads(text)
                except ValueError:
                    raise ProtocolError(f"event data is not JSON: {text[:200]!r}")
                yield {"id": event_id, "event": kind or "message", "data": parsed}
            elif kind is not None or event_id is not None:
                raise ProtocolError(f"event {kind!r} (id {event_id}) without data")
            event_id, kind, data = None, None, []
            continue
        if line.startswith(":"):
            yield {"comment": line[1:].lstrip(" ")}
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "id":
            if not value.isdigit():
                raise ProtocolError(f"id is not a sequence number: {value!r}")
            event_id = int(value)
        elif field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "retry":
            if not value.isdigit():
                raise ProtocolError(f"bad retry {value!r}")
            yield {"retry": int(value)}
        else:
            raise ProtocolError(f"unknown SSE field {field!r}")
    if data or kind is not None:
        raise ProtocolError("body ends inside an event")


def ndjson_items(lines):
    for line in lines:
        if line == "":
            raise ProtocolError("empty NDJSON line")
        try:
            item = json.loads(line)
        except ValueError:
            raise ProtocolError(f"line is not JSON: {line[:200]!r}")
        if not isinstance(item, dict):
            raise ProtocolError(f"line is not a JSON object: {line[:200]!r}")
        yield item


def kind_of(item, ndjson):
    """The item's kind: None for SSE comments and retry fields."""
    return item.get("event") if ndjson or "data" in item else None


def emit(obj):
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def run(args):
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        raise SystemExit(f"--url must be http://HOST:PORT/...: {args.url}")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    deadline = time.monotonic() + args.timeout
    summary = {"events": 0, "missed": 0}

    def close(reason, exit_status, **extra):
        emit({"client": "closed", "reason": reason, **summary, **extra})
        return exit_status

    try:
        sock = socket.socket(socket.AF_INET6 if ":" in url.hostname else socket.AF_INET, socket.SOCK_STREAM)
        if args.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.connect((url.hostname, url.port or 80))
    except OSError as error:
        return close("connect-error", 1, detail=str(error))

    with sock:
        accept = "application/x-ndjson" if args.ndjson else "text/event-stream"
        request = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", f"Accept: {accept}",
                   "Cache-Control: no-cache", "Connection: close"]
        if args.token:
            request.append(f"Authorization: Bearer {args.token}")
        if args.last_event_id is not None:
            request.append(f"Last-Event-ID: {args.last_event_id}")
        sock.sendall(("\r\n".join(request) + "\r\n\r\n").encode("latin-1"))
        if args.stall:
            time.sleep(args.stall)

        conn = Connection(sock, deadline)
        ended = None
        try:
            status, headers = read_head(conn)
            if status != 200:
                body = b"".join(body_pieces(conn, headers)).decode("utf-8", "replace")
                try:
                    body = json.loads(body)
                except ValueError:
                    pass
                emit({"status": status, "body": body})
                return close("http-status", 3, status=status)
            content_type = headers.get("content-type", [""])[0].split(";")[0].strip().lower()
            if content_type != accept:
                raise ProtocolError(f"Content-Type {content_type!r} for Accept {accept!r}")
            lines = lines_of(body_pieces(conn, headers))
            for item in (ndjson_items(lines) if args.ndjson else sse_items(lines)):
                if ended is not None:
                    raise ProtocolError(f"item after the end: {item}")
                emit(item)
                kind = kind_of(item, args.ndjson)
                if kind == "end":
                    data = item if args.ndjson else item["data"]
                    ended = data.get("reason") if isinstance(data, dict) else None
                    # Keep reading: the body must finish right after its end record.
                    conn.deadline = min(conn.deadline, time.monotonic() + 5)
                elif kind == "gap":
                    data = item if args.ndjson else item["data"]
                    summary["missed"] += int(data.get("missed", 0)) if isinstance(data, dict) else 0
                elif kind is not None and kind not in DATA_KINDS_EXCLUDED:
                    summary["events"] += 1
                    if args.stop_after and summary["events"] >= args.stop_after:
                        return close("stop-after", 0)
            if ended is None:
                return close("eof", 1, detail="the body finished without an end record")
            return close("end", 0, end=ended)
        except ProtocolError as error:
            return close("protocol-error", 1, detail=str(error))
        except Timeout:
            if ended is not None:
                return close("protocol-error", 1, detail="the body did not finish after its end record")
            return close("timeout", 2)
        except EOF as error:
            return close("eof", 1, detail=str(error))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/v1/probes/NAME/events")
    parser.add_argument("--token", help="bearer token")
    parser.add_argument("--last-event-id", type=int, help="resume after this event (Last-Event-ID)")
    parser.add_argument("--ndjson", action="store_true", help="ask for NDJSON instead of Server-Sent Events")
    parser.add_argument("--rcvbuf", type=int, help="SO_RCVBUF in bytes, set before connecting")
    parser.add_argument("--stall", type=float, default=0, help="seconds to read nothing after sending the request")
    parser.add_argument("--stop-after", type=int, help="disconnect after this many data events")
    parser.add_argument("--timeout", type=float, default=30, help="seconds for the whole exchange (default 30)")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
