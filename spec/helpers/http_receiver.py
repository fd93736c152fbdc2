#!/usr/bin/env python3
"""A real webhook receiver for mod_brisk_iot's specs.

Listens on 127.0.0.1:PORT, appends one JSON line per request to LOG (method,
path, headers, body, time, and whether the Standard Webhooks signature
verifies with SECRET, computed here independently of Brisk with Python's
hmac). The reply code comes from CONTROL: "CODE COUNT" answers CODE to the
next COUNT requests after the file changed, then 200.
"""
import base64, hashlib, hmac, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, log_path, control_path, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else b""
state = {"content": None, "used": 0}


def verify(headers, body):
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    sigs = headers.get("webhook-signature", "").split()
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return any(s.startswith("v1,") and hmac.compare_digest(s[3:], expected) for s in sigs)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        code = 200
        try:
            with open(control_path) as f:
                content = f.read().strip()
        except OSError:
            content = ""
        if content != state["content"]:
            state["content"], state["used"] = content, 0
        if content:
            c, n = content.splitlines()[0].split()
            if state["used"] < int(n):
                state["used"] += 1
                code = int(c)
        rec = {"time": time.time(), "method": self.command, "path": self.path, "headers": headers,
               "body": body.decode("utf-8", "replace"), "valid": verify(headers, body), "code": code}
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        reply = b"ok"
        self.send_response(code)
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST


ThreadingHTTPServer.allow_reuse_address = True
srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
open(log_path + ".ready", "w").close()
srv.serve_forever()
