"""No log line holds a token, a session id or a pairing code, whatever a client sends
(issue 17, point 3).

A real daemon process logging at DEBUG; the requests a careless or hostile client sends: a
bearer token with one stray control character (a token file saved with Windows line
endings), an over-long Authorization header, a session cookie with ``\\x7f``, a token in a
malformed request line, a pairing code in a malformed header. Each is refused with its
4xx, and the daemon's whole standard error (the journal) is searched for the secrets.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from edged.ops.log_redaction import RedactingFilter
from tests.daemon_process import DaemonProcess, create_tokens, write_config


def _send(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_hostile_headers_never_put_a_secret_in_the_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    names = create_tokens(data, ["lane-1", "manager-1"], scope="manager")
    token, manager = names["lane-1"], names["manager-1"]
    config = write_config(tmp_path / "edged.toml", log_level="DEBUG")
    with DaemonProcess(data, config=config) as daemon:
        code = daemon.cli("pair", "--name", "lane-9").stdout.splitlines()[-1]
        host = f"Host: 127.0.0.1:{daemon.port}\r\n".encode()
        signed_in = daemon.request("POST", "/session", {"token": manager},
                                   headers={"Origin": daemon.base_url})
        assert signed_in.status == 200
        sid = signed_in.headers["Set-Cookie"].split("=", 1)[1].split(";", 1)[0]
        hostile = [
            b"GET /v1/terminals HTTP/1.1\r\n" + host +
            b"Authorization: Bearer " + token.encode() + b"\r\r\n\r\n",
            b"GET /v1/terminals HTTP/1.1\r\n" + host +
            b"Authorization: Bearer " + token.encode() + b"\x01\r\n\r\n",
            b"GET /v1/terminals HTTP/1.1\r\n" + host +
            b"Authorization: Bearer " + token.encode() + b"A" * 9000 + b"\r\n\r\n",
            b"GET /v1/status HTTP/1.1\r\n" + host +
            b"Cookie: edged_session=" + sid.encode() + b"\x7f\r\n\r\n",
            b"GET /v1/terminals?token=" + token.encode() + b"\x01 HTTP/1.1\r\n" + host +
            b"\r\n",
            b"POST /v1/pair HTTP/1.1\r\n" + host + b"X-Code " + code.encode() + b"\r\n"
            b"Content-Length: 2\r\n\r\n{}",
            b"GET /v1/terminals HTTP/1.1\r\n" + host + b"Authorization: Bearer " +
            token.encode() + b"\r\nCookie: edged_session=" + sid.encode() + b"\x00\r\n\r\n",
        ]
        answers = [_send(daemon.port, raw) for raw in hostile]
        assert daemon.get("/healthz").status == 200
        log = daemon.stderr_text()
    for raw, answer in zip(hostile, answers, strict=True):
        assert answer[9:10] == b"4", (raw[:60], answer[:80])  # refused, never a 500
    assert "refused a malformed request" in log  # the log was written: it names the reason
    normalized = code.replace("-", "")
    for secret in (token, token[4:], manager, sid, code, normalized):
        assert secret not in log, secret
    assert "Traceback" not in log


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("edged.test", logging.INFO, __file__, 1, msg, args, None)


def test_the_filter_covers_what_a_line_may_carry() -> None:
    """The root handler's filter, on lines as the daemon's libraries could write them."""
    redact = RedactingFilter()
    token = "edg_" + "Ab1-_" * 8
    sid = "s" * 20 + "-_x" * 8
    cases = [
        _record("bad header: %r", f"Authorization: Bearer {token}\x01".encode()),
        _record("headers %s", {"authorization": f"Bearer {token}", "cookie": f"a=b; "
                               f"__Host-edged_session={sid}"}),
        _record("Cookie: edged_session=%s; theme=dark", sid),
        _record("pairing with %s from %s", "CQ884-HSPCW", "10.0.0.7"),
        _record('body {"code": "cq884hspcw", "proof": "%s"}', "ab" * 32),
        _record("token %s and %s", token, token.replace("edg_", "EDG_")),
    ]
    for record in cases:
        assert redact.filter(record)
        text = record.getMessage()
        for secret in (token[4:], sid, "CQ884", "cq884hspcw", "ab" * 32):
            assert secret not in text, text
    plain = _record("payment %s approved: %d EUR from %s", "pay_abc", 1250, "lane-1")
    assert redact.filter(plain)
    assert plain.getMessage() == "payment pay_abc approved: 1250 EUR from lane-1"
