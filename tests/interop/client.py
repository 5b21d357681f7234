#!/usr/bin/env python3
"""XMPP c2s test client for fedgate's real-peer interop tests (driven by tests/support/peers.rs).

Usage: client.py JID PASSWORD HOST PORT [--no-auto-accept]

Protocol: one JSON object per line.
  stdin (commands):
    {"send": {"to": JID, "body": TEXT, "type": "chat", "id": ID}}  type, id optional
    {"burst": {"to": JID, "prefix": P, "n": N, "body": TEXT, "pause_every": K, "pause": S}}
                                                               N chat messages with ids P0..P(N-1),
                                                               a pause of S seconds after every K
    {"subscribe": JID}                                         presence type=subscribe
    {"presence": {"to": JID?, "type": T?, "show": S?, "status": S?}}
    {"iq_ping": JID}  or  {"iq_ping": {"to": JID, "timeout": SECONDS}}   XEP-0199
    {"auto_accept": true|false}                                answer subscription requests?
    {"disconnect": true}
  stdout (events):
    {"connected": true, "jid": FULL_JID}                       session started (presence sent)
    {"message": {"from": BARE, "from_full": FULL, "body": TEXT, "type": T, "id": ID}}
    {"message_error": {"from": BARE, "from_full": FULL, "condition": C, "text": TEXT, "id": ID}}
    {"burst_sent": {"prefix": P, "n": N}}                      the burst was handed to the socket
    {"presence": {"from": BARE, "from_full": FULL, "type": T, "status": S}}
                                                               T = available|unavailable|
                                                               subscribe|subscribed|unsubscribe|
                                                               unsubscribed|error; S = the
                                                               <status/> text ("" if none)
    {"iq_result": {"to": JID, "from": JID, "rtt": SECONDS}}   ping answered (type=result)
    {"error": {"kind": K, "to"?: JID, "condition"?: C, "text": TEXT}}
        K = auth|connection|iq_ping|command|internal
    {"disconnected": REASON}
The process exits when stdin reaches EOF (after a clean disconnect).
TLS certificates are NOT verified (test CA); STARTTLS is still required.
"""
import asyncio
import json
import ssl
import sys

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout


STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def error_condition(stanza):
    """The defined condition of a stanza's error, read from the XML: slixmpp's Error stanza
    only knows RFC 3920's conditions and reports others (e.g. policy-violation, RFC 6120
    8.3.3.12) as ""."""
    err = stanza["error"]
    for child in err.xml:
        if child.tag.startswith("{%s}" % STANZAS_NS) and child.tag != "{%s}text" % STANZAS_NS:
            return child.tag.split("}", 1)[1]
    return err["condition"]


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, auto_accept):
        super().__init__(jid, password)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.ssl_context = ctx
        # STARTTLS on the plain c2s port only: no direct-TLS attempt first, no plaintext.
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.set_auto_accept(auto_accept)
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.on_message_error)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("connection_failed", self.on_connection_failed)
        self.add_event_handler("disconnected", self.on_disconnected)

    def set_auto_accept(self, on):
        # auto_authorize: answer "subscribe" with "subscribed";
        # auto_subscribe: also send our own "subscribe" back.
        self.auto_authorize = True if on else None
        self.auto_subscribe = bool(on)

    async def on_session_start(self, _event):
        self.send_presence()
        try:
            await self.get_roster(timeout=10)
        except (IqError, IqTimeout) as e:
            emit({"error": {"kind": "internal", "text": f"roster fetch failed: {e}"}})
        emit({"connected": True, "jid": str(self.boundjid)})

    def on_message(self, msg):
        if msg["type"] == "error":
            return  # reported by on_message_error
        if not msg["body"]:
            return  # chat states etc.
        emit({"message": {"from": str(msg["from"].bare), "from_full": str(msg["from"]),
                          "body": msg["body"], "type": msg["type"], "id": msg["id"]}})

    def on_message_error(self, msg):
        emit({"message_error": {"from": str(msg["from"].bare), "from_full": str(msg["from"]),
                                "condition": error_condition(msg),
                                "text": msg["error"]["text"], "id": msg["id"]}})

    def on_presence(self, pres):
        emit({"presence": {"from": str(pres["from"].bare), "from_full": str(pres["from"]),
                           "type": pres["type"], "status": pres["status"]}})

    def on_failed_auth(self, _event):
        emit({"error": {"kind": "auth", "text": "authentication failed"}})

    def on_connection_failed(self, err):
        emit({"error": {"kind": "connection", "text": str(err)}})

    def on_disconnected(self, reason):
        emit({"disconnected": str(reason) if reason else ""})

    async def ping(self, to, timeout):
        try:
            rtt = await self.plugin["xep_0199"].ping(jid=to, timeout=timeout)
            emit({"iq_result": {"to": to, "from": to, "rtt": rtt}})
        except IqError as e:
            emit({"error": {"kind": "iq_ping", "to": to,
                            "condition": error_condition(e.iq),
                            "text": e.iq["error"]["text"]}})
        except IqTimeout:
            emit({"error": {"kind": "iq_ping", "to": to, "condition": "timeout",
                            "text": f"no answer within {timeout}s"}})

    async def burst(self, a):
        """Messages with ids prefix0.., paced so that a kill can land in the middle."""
        every, pause = int(a.get("pause_every", 0)), float(a.get("pause", 0))
        for i in range(int(a["n"])):
            m = self.make_message(mto=a["to"], mbody=a["body"], mtype="chat")
            m["id"] = "%s%d" % (a["prefix"], i)
            m.send()
            if every and i % every == every - 1:
                await asyncio.sleep(pause)
        emit({"burst_sent": {"prefix": a["prefix"], "n": int(a["n"])}})

    def handle_command(self, cmd):
        if "send" in cmd:
            a = cmd["send"]
            m = self.make_message(mto=a["to"], mbody=a["body"], mtype=a.get("type", "chat"))
            if "id" in a:
                m["id"] = a["id"]
            m.send()
        elif "burst" in cmd:
            asyncio.ensure_future(self.burst(cmd["burst"]))
        elif "subscribe" in cmd:
            self.send_presence_subscription(pto=cmd["subscribe"], ptype="subscribe")
        elif "presence" in cmd:
            a = cmd["presence"] or {}
            self.send_presence(pto=a.get("to"), ptype=a.get("type"), pshow=a.get("show"),
                               pstatus=a.get("status"))
        elif "iq_ping" in cmd:
            a = cmd["iq_ping"]
            if isinstance(a, str):
                a = {"to": a}
            asyncio.ensure_future(self.ping(a["to"], float(a.get("timeout", 10))))
        elif "auto_accept" in cmd:
            self.set_auto_accept(bool(cmd["auto_accept"]))
        elif "disconnect" in cmd:
            self.disconnect()
        else:
            emit({"error": {"kind": "command", "text": f"unknown command: {cmd!r}"}})


async def read_stdin(client):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            client.handle_command(json.loads(line))
        except Exception as e:  # keep running: report and continue
            emit({"error": {"kind": "command", "text": f"{type(e).__name__}: {e}"}})


async def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    jid, password, host, port = args
    client = Client(jid, password, auto_accept="--no-auto-accept" not in sys.argv)
    client.connect(host=host, port=int(port))
    await read_stdin(client)
    # stdin closed: leave cleanly (bounded wait).
    try:
        await asyncio.wait_for(client.disconnect(wait=1.0), timeout=3)
    except Exception:
        pass


if __name__ == "__main__":
    asyncio.run(main())
