"""A minimal webhook receiver for trying orderflow-ingest's webhooks locally.

    pip install standardwebhooks
    WEBHOOK_SECRET=whsec_... python3 docs/examples/webhook_receiver.py 8099

It verifies every request with the `standardwebhooks` package (any Standard Webhooks library
works the same way), prints the verified event, and answers 204; a bad signature gets 400.
It keeps the webhook-ids it has seen, so a repeat (at-least-once delivery) is noticed.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

verifier = Webhook(os.environ["WEBHOOK_SECRET"])
seen: set[str] = set()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            event = verifier.verify(body, dict(self.headers.items()))
        except WebhookVerificationError as error:
            print(f"REJECTED: {error}", flush=True)
            self.send_response(400)
            self.end_headers()
            return
        webhook_id = self.headers["webhook-id"]
        repeat = " (repeat)" if webhook_id in seen else ""
        seen.add(webhook_id)
        print(f"verified {webhook_id}{repeat}: {json.dumps(event)}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8099
    print(f"listening on 127.0.0.1:{port}", flush=True)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
