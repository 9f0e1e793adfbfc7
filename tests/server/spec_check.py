#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Check a live curvd against its contract, api/openapi.yaml.

Usage: /usr/bin/python3 tests/server/spec_check.py build/curvd

Starts the daemon on a fresh database in a temporary folder (--port 0),
sends good and bad requests to every operation of the spec, and checks each
response: the status is declared for the operation, the Content-Type is one
of the declared media types, and a JSON body validates against the declared
schema (JSON Schema 2020-12, $ref resolved inside the spec). Requests that
are meant to succeed are validated against the request schema too, so the
examples stay inside the contract. Every operation must be exercised.

Responses for requests no route matches (404, 405) belong to no operation;
they are checked against components/responses/Problem.

A second daemon with a token file covers 401 and tenant isolation; the
first one's graceful stop covers /readyz's 503 (draining).

One line per response, then "spec-check: N responses valid, M operations
covered". Exit 1 on any mismatch (all are listed), 2 on a usage or start-up
error. Needs Debian's python3-yaml and python3-jsonschema (>= 4.0), which
install for /usr/bin/python3.
"""

import base64
import datetime
import http.client
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

try:
    import yaml
    import jsonschema
    from jsonschema import Draft202012Validator, FormatChecker
except ImportError as e:  # pragma: no cover
    sys.exit(f"spec-check: {e}; install python3-yaml python3-jsonschema "
             "and run with /usr/bin/python3")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC_PATH = os.path.join(ROOT, "api", "openapi.yaml")
SPEC_URI = "urn:curvd:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_BODY = 64 * 1024  # the daemons run with this --max-body, so 413 is cheap
MEMORY_BUDGET = 8192  # the second daemon's --memory-budget, so 422 is cheap
TOKENS = {"alice": "spec-check-token-alice-0001", "bob": "spec-check-token-bob-000002"}


# ---- The spec ------------------------------------------------------------

def load_spec():
    with open(SPEC_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def pointer(*parts):
    """A JSON pointer from raw keys (RFC 6901 escaping)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def make_format_checker():
    """date-time (RFC 3339) and uri checked without optional packages."""
    fc = FormatChecker()
    rfc3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

    @fc.checks("date-time")
    def _date_time(value):
        if not isinstance(value, str):
            return True
        if not rfc3339.match(value):
            return False
        v = value.upper().replace("Z", "+00:00")
        v = re.sub(r"\.(\d{6})\d+", r".\1", v)  # fromisoformat takes microseconds at most
        try:
            datetime.datetime.fromisoformat(v)
        except ValueError:
            return False
        return True

    @fc.checks("uri")
    def _uri(value):
        if not isinstance(value, str):
            return True
        u = urllib.parse.urlsplit(value)
        return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", u.scheme)) and " " not in value

    return fc


class Spec:
    """Operations by operationId, and validators over the whole document."""

    def __init__(self, doc):
        self.doc = doc
        self.ops = {}  # operationId -> (method, path template, operation)
        for path, item in doc.get("paths", {}).items():
            for method in METHODS:
                op = item.get(method)
                if op is not None:
                    self.ops[op["operationId"]] = (method.upper(), path, op)
        self.fc = make_format_checker()
        self._validators = {}
        try:  # jsonschema >= 4.18: a referencing registry
            import referencing
            import referencing.jsonschema
            res = referencing.jsonschema.DRAFT202012.create_resource(doc)
            self._registry = referencing.Registry().with_resource(SPEC_URI, res)
        except ImportError:  # jsonschema 4.0 .. 4.17 (Debian bookworm: 4.10)
            self._registry = None

    def deref(self, obj):
        """Follow a (chain of) $ref to an object inside the document."""
        seen = 0
        while isinstance(obj, dict) and "$ref" in obj:
            ref = obj["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"external $ref {ref} is not supported")
            obj = self.doc
            for part in ref[2:].split("/"):
                obj = obj[urllib.parse.unquote(part).replace("~1", "/").replace("~0", "~")]
            seen += 1
            if seen > 32:
                raise ValueError("$ref loop")
        return obj

    def ref_of(self, obj):
        return obj.get("$ref") if isinstance(obj, dict) else None

    def validator(self, ptr):
        """A Draft 2020-12 validator for the schema at JSON pointer @ptr."""
        v = self._validators.get(ptr)
        if v is None:
            root = {"$ref": SPEC_URI + "#" + urllib.parse.quote(ptr, safe="/~")}
            if self._registry is not None:
                v = Draft202012Validator(root, registry=self._registry, format_checker=self.fc)
            else:
                resolver = jsonschema.RefResolver(SPEC_URI, self.doc, store={SPEC_URI: self.doc})
                v = Draft202012Validator(root, resolver=resolver, format_checker=self.fc)
            self._validators[ptr] = v
        return v

    def errors(self, ptr, instance):
        v = self.validator(ptr)
        return sorted(v.iter_errors(instance), key=lambda e: list(e.absolute_path))

    def response(self, op_id, status):
        """(pointer of the response object, response) for @status, or None."""
        _, path, op = self.ops[op_id]
        base = ("paths", path, self.ops[op_id][0].lower(), "responses")
        responses = op.get("responses", {})
        for key in (str(status), f"{str(status)[0]}XX", "default"):
            if key in responses:
                r = responses[key]
                ref = self.ref_of(r)
                ptr = ref[1:] if ref else pointer(*base, key)
                return ptr, self.deref(r), key
        return None


def media_matches(declared, got):
    if declared == got:
        return True
    if declared.endswith("/*"):
        return got.startswith(declared[:-1])
    return declared == "*/*"


def content_for(spec, resp_ptr, resp, ctype):
    """(media key, pointer of its schema or None) for the response's base type."""
    for media, body in (resp.get("content") or {}).items():
        if media_matches(media.lower(), ctype):
            if "schema" not in body:
                return media, None
            return media, resp_ptr + pointer("content", media, "schema")
    return None, None


def is_json_media(m):
    return m == "application/json" or m.endswith("+json")


# ---- The daemons -----------------------------------------------------------

class Daemon:
    """curvd on a free port; its stderr is drained by a thread (a full pipe
    would block the daemon's access log)."""

    def __init__(self, binary, workdir, name, extra=()):
        self.name = name
        self.lines = []
        self.draining = threading.Event()
        self.port = None
        db = os.path.join(workdir, name, "curvd.db")
        args = [binary, "--port", "0", "--db", db, "--durability", "normal",
                "--max-body", str(MAX_BODY), "--threads", "4", *extra]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 10
        buf = b""
        while self.port is None:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                break
            r, _, _ = select.select([self.proc.stderr], [], [], left)
            if not r:
                break
            chunk = os.read(self.proc.stderr.fileno(), 4096)
            if not chunk:
                break
            buf = self._take_lines(buf + chunk)
        if self.port is None:
            self.stop()
            raise RuntimeError(f"{name} daemon did not start:\n" + "\n".join(self.lines)
                               + buf.decode("utf-8", "replace"))
        self._rest = buf
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _take_lines(self, buf):
        """Record each complete stderr line (the port, the drain notice);
        return the unfinished rest."""
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            self.lines.append(text)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)
            if m:
                self.port = int(m.group(1))
            if "received, draining" in text:
                self.draining.set()
        return buf

    def _drain(self):
        buf = self._rest
        while True:
            try:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
            except OSError:
                return
            if not chunk:
                return
            buf = self._take_lines(buf + chunk)

    def log_for(self, request_id):
        return [l for l in self.lines if request_id and request_id in l]

    def stop(self):
        """SIGTERM, wait; SIGKILL only if it does not stop. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# ---- Requests and checks ----------------------------------------------------

class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value
        self.body = body
        self.ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
        self.json = None

    def header(self, name):
        return self.headers.get(name.lower())


class Checker:
    def __init__(self, spec):
        self.spec = spec
        self.valid = 0
        self.failures = []
        self.warnings = []
        self.covered = {}  # operationId -> set of statuses seen

    # -- transport --

    def send(self, daemon, method, path, body=None, headers=None, chunked=False, conn=None):
        own = conn is None
        if own:
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        hdrs = dict(headers or {})
        try:
            if chunked:
                conn.putrequest(method, path, skip_accept_encoding=True)
                for k, v in hdrs.items():
                    conn.putheader(k, v)
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for i in range(0, len(body), 16384):
                    part = body[i:i + 16384]
                    conn.send(b"%x\r\n" % len(part) + part + b"\r\n")
                conn.send(b"0\r\n\r\n")
            else:
                conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            if own:
                conn.close()

    # -- reporting --

    def fail(self, label, reply, why, detail=None, daemon=None):
        lines = [f"FAIL {label}: {why}"]
        if reply is not None:
            lines.append(f"     status {reply.status}, Content-Type "
                         f"{reply.header('content-type')!r}")
            body = reply.body[:1500]
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                body = repr(body)
            lines.append(f"     body: {body}" + (" ..." if len(reply.body) > 1500 else ""))
            if daemon is not None:
                for l in daemon.log_for(reply.header("x-request-id"))[:3]:
                    lines.append(f"     daemon: {l}")
        if detail:
            lines.extend("     " + d for d in detail)
        self.failures.append("\n".join(lines))
        print("\n".join(lines), flush=True)

    # -- the checks --

    def check(self, daemon, op_id, method, path, *, expect, body=None, ctype=None, headers=None,
              good=None, request_schema=None, chunked=False, conn=None, note=""):
        """Send one request, check the reply against the spec; return the Reply."""
        hdrs = dict(headers or {})
        if ctype is not None:
            hdrs["Content-Type"] = ctype
        raw = body
        if isinstance(body, (dict, list)):
            raw = json.dumps(body).encode()
        elif isinstance(body, str):
            raw = body.encode()
        label = f"{op_id or '(no route)'} {method} {urllib.parse.unquote(path)}"
        if note:
            label += f" [{note}]"

        if op_id is not None:
            smethod, template, _ = self.spec.ops[op_id]
            tmpl = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            if smethod != method or not re.match(tmpl, path.split("?")[0]):
                raise AssertionError(f"{label} is not {smethod} {template}")
            # A request meant to succeed must itself be inside the contract.
            if good is None:
                good = 200 <= expect < 300
            if good and request_schema is not False:
                self.check_request(label, op_id, raw, ctype, hdrs, request_schema)

        try:
            reply = self.send(daemon, method, path, raw, hdrs, chunked=chunked, conn=conn)
        except (OSError, http.client.HTTPException) as e:
            self.fail(label, None, f"no response: {e!r}")
            return None
        ok = self.check_reply(daemon, label, op_id, reply, expect)
        if ok:
            self.valid += 1
        return reply

    def check_request(self, label, op_id, raw, ctype, headers, schema_media):
        """A request meant to succeed must itself be inside the contract."""
        method, path, op = self.spec.ops[op_id]
        rb = op.get("requestBody")
        if rb is None:
            return
        rb_ptr = pointer("paths", path, method.lower(), "requestBody")
        ref = self.spec.ref_of(rb)
        if ref:
            rb_ptr, rb = ref[1:], self.spec.deref(rb)
        base = (ctype or "").split(";")[0].strip().lower()
        media = next((m for m in rb.get("content", {}) if media_matches(m.lower(), base)), None)
        if media is None:
            self.fail(label, None, f"a request meant to succeed has Content-Type {ctype!r}, "
                                   f"not one of the spec's {list(rb.get('content', {}))}")
            return
        if schema_media:  # the binary extension: its JSON header as a StepRequest
            n = int(headers["Inference-Header-Content-Length"])
            raw, media = raw[:n], schema_media
        if not is_json_media(media):
            return
        sptr = rb_ptr + pointer("content", media, "schema")
        errs = self.spec.errors(sptr, json.loads(raw))
        if errs:
            self.fail(label, None, f"a request meant to succeed breaks the request schema "
                                   f"#{sptr}: {errs[0].message} at "
                                   f"/{'/'.join(map(str, errs[0].absolute_path))}")

    def check_reply(self, daemon, label, op_id, reply, expect):
        problems = []
        expects = expect if isinstance(expect, (tuple, list, set)) else (expect,)
        if reply.status not in expects:
            problems.append(f"expected status {' or '.join(map(str, expects))}, "
                            f"got {reply.status}")
        if op_id is not None:
            self.covered.setdefault(op_id, set()).add(reply.status)
            found = self.spec.response(op_id, reply.status)
            if found is None:
                declared = list(self.spec.ops[op_id][2].get("responses", {}))
                self.fail(label, reply, f"status {reply.status} is not declared for {op_id} "
                                        f"(declared: {', '.join(declared)})",
                          problems, daemon)
                return False
            resp_ptr, resp, key = found
        else:
            # No route matched: 404/405 problem details, not an operation.
            resp_ptr = "/components/responses/Problem"
            resp, key = self.spec.deref({"$ref": "#" + resp_ptr}), "(unrouted)"

        content = resp.get("content") or {}
        where = ""
        if not content:
            if reply.body:
                problems.append(f"the spec declares no body for {key}, got "
                                f"{len(reply.body)} bytes")
            if reply.header("content-type"):
                problems.append(f"no body declared, yet Content-Type "
                                f"{reply.header('content-type')!r}")
        else:
            media, schema_ptr = content_for(self.spec, resp_ptr, resp, reply.ctype)
            if media is None:
                problems.append(f"Content-Type {reply.header('content-type')!r} is not declared "
                                f"for {op_id or 'an unrouted request'} {reply.status} "
                                f"(declared: {', '.join(content)})")
                # Still validate what can be: a JSON body (or the JSON header
                # of a binary-extension body) against the declared JSON schema.
                json_media = next((m for m in content if is_json_media(m)), None)
                if json_media and "schema" in content[json_media]:
                    schema_ptr = resp_ptr + pointer("content", json_media, "schema")
                    media = json_media
                else:
                    schema_ptr = None
            where = f"{reply.ctype or '-'}"
            if schema_ptr:
                where += " " + (self.spec.ref_of(self._raw_at(schema_ptr)) or "#" + schema_ptr)
            if media and is_json_media(media) and schema_ptr:
                problems += self.validate_json(reply, schema_ptr)
            elif media and schema_ptr:
                schema = self.spec.deref({"$ref": "#" + schema_ptr})
                if schema.get("type") == "string" and schema.get("contentMediaType") is None:
                    try:
                        text = reply.body.decode("utf-8")
                    except UnicodeDecodeError:
                        problems.append("a text body that is not UTF-8")
                        text = None
                    if text is not None:
                        problems += [f"body: {e.message}" for e in self.spec.errors(schema_ptr,
                                                                                  text)]
                if media == "application/octet-stream" and not reply.body:
                    problems.append("an empty application/octet-stream body")
                # The binary extension: a JSON header, then the tensors' bytes.
                json_media = next((m for m in content if is_json_media(m)), None)
                if (reply.header("inference-header-content-length") is not None and json_media
                        and "schema" in content[json_media]):
                    jptr = resp_ptr + pointer("content", json_media, "schema")
                    problems += self.validate_json(reply, jptr)
                    where += " + JSON header " + (self.spec.ref_of(self._raw_at(jptr))
                                                  or "#" + jptr)

        for name, raw_h in (resp.get("headers") or {}).items():
            h = self.spec.deref(raw_h)
            hbase = (self.spec.ref_of(raw_h) or "#" + resp_ptr + pointer("headers", name))[1:]
            value = reply.header(name)
            if value is None:
                if h.get("required"):
                    problems.append(f"required header {name} is missing")
                continue
            schema = self.spec.deref(h.get("schema") or {})
            if schema.get("type") == "integer":
                try:
                    value = int(value)
                except ValueError:
                    pass
            if "schema" in h:
                problems += [f"header {name}: {e.message}"
                             for e in self.spec.errors(hbase + "/schema", value)]

        if problems:
            self.fail(label, reply, "; ".join(problems[:1]), problems[1:], daemon)
            return False
        print(f"ok   {reply.status} {label} -> {where or 'no body'}", flush=True)
        return True

    def _raw_at(self, ptr):
        obj = self.spec.doc
        for part in ptr[1:].split("/"):
            obj = obj[part.replace("~1", "/").replace("~0", "~")]
        return obj

    def validate_json(self, reply, schema_ptr):
        body = reply.body
        hl = reply.header("inference-header-content-length")
        tail = b""
        if reply.ctype == "application/octet-stream" and hl is not None:
            n = int(hl)
            body, tail = reply.body[:n], reply.body[n:]
        try:
            doc = json.loads(body)
        except ValueError as e:
            return [f"the body is not JSON: {e}"]
        reply.json = doc
        out = []
        for e in self.spec.errors(schema_ptr, doc)[:5]:
            at = "/" + "/".join(map(str, e.absolute_path))
            out.append(f"schema {schema_ptr}: {e.message} (at {at}, "
                       f"schema path {'/'.join(map(str, e.absolute_schema_path))})")
        if hl is not None and isinstance(doc, dict):
            sizes = [t.get("parameters", {}).get("binary_data_size", 0)
                     for t in doc.get("update", []) if isinstance(t, dict)]
            if sum(sizes) != len(tail):
                out.append(f"binary tail of {len(tail)} bytes, the header claims {sum(sizes)}")
        return out


# ---- The scenario ------------------------------------------------------------

LAYOUT = [{"name": "fc", "kind": "dense", "shape": [2, 3], "bias": True},
          {"name": "gain", "kind": "vector", "shape": [2]}]
FC = [[0.1, -0.2, 0.3, 1.0], [0.5, 0.5, -1.0, 0.25]]
GAIN = [0.01, -0.02]
OPTIMIZERS = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    "adagrad_diag": {"lr": 0.1},
    "adagrad_full": {"lr": 0.1},
    "adagrad_bma": {"lr": 0.1, "partition": "row"},
    "mbag": {"lr": 0.1},
    "mbag_ema": {"lr": 0.1},
    "mbag_n": {"lr": 0.1, "lr_schedule": "multistep", "lr_milestones": "100,150"},
}


def flat(rows):
    return [x for r in rows for x in r]


def json_step(n, scale=1.0, dtype="FP32"):
    return {"step": n, "gradients": [
        {"name": "fc", "shape": [2, 4], "datatype": dtype,
         "data": [[x * scale for x in r] for r in FC]},
        {"name": "gain", "shape": [2], "datatype": dtype, "data": [x * scale for x in GAIN]}]}


def b64_step(n, scale=1.0):
    def b(vals):
        return {"b64": base64.b64encode(struct.pack("<%dd" % len(vals), *vals)).decode()}
    return {"step": n, "gradients": [
        {"name": "fc", "shape": [2, 4], "datatype": "FP64",
         "data": b([x * scale for x in flat(FC)])},
        {"name": "gain", "shape": [2], "datatype": "FP64", "data": b([x * scale for x in GAIN])}]}


def binary_step(n, scale=1.0):
    fc = struct.pack("<8f", *[x * scale for x in flat(FC)])
    gain = struct.pack("<2f", *[x * scale for x in GAIN])
    header = json.dumps({"step": n, "gradients": [
        {"name": "fc", "shape": [2, 4], "datatype": "FP32",
         "parameters": {"binary_data_size": len(fc)}},
        {"name": "gain", "shape": [2], "datatype": "FP32",
         "parameters": {"binary_data_size": len(gain)}}]}).encode()
    return header, header + fc + gain


def run(binary, workdir, spec):
    ck = Checker(spec)
    d = Daemon(binary, workdir, "main")
    auth = None
    try:
        fat_blob = scenario(ck, d)
        tokens = os.path.join(workdir, "tokens")
        with open(tokens, "w", encoding="utf-8") as f:
            f.write("# token tenant\n")
            for tenant, tok in TOKENS.items():
                f.write(f"{tok} {tenant}\n")
        auth = Daemon(binary, workdir, "auth",
                      ["--token-file", tokens, "--memory-budget", str(MEMORY_BUDGET)])
        auth_scenario(ck, auth, fat_blob)
        drain_scenario(ck, d)
    finally:
        for x in (d, auth):
            if x is not None:
                rc = x.stop()
                if rc != 0:
                    ck.failures.append(f"FAIL the {x.name} daemon exited {rc} on SIGTERM")
                    print(ck.failures[-1])
    return ck


def scenario(ck, d):
    J = "application/json"
    c = ck.check

    # Operations routes.
    for op, path in (("healthz", "/healthz"), ("livez", "/livez"), ("readyz", "/readyz")):
        c(d, op, "GET", path, expect=200)
    m = c(d, "metrics", "GET", "/metrics", expect=200)
    if m is not None and b"curvd_" not in m.body:
        ck.fail("metrics GET /metrics", m, "no curvd_ metric in the exposition")
    c(d, "getVersion", "GET", "/v1/version", expect=200)

    # Create: one session per optimizer (and a conv2d block once).
    ids = {}
    for name, cfg in OPTIMIZERS.items():
        r = c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=201,
              body={"optimizer": name, "config": cfg, "layout": LAYOUT}, note=name)
        if r is not None and r.json:
            ids[name] = r.json["id"]
            if r.header("location") != f"/v1/sessions/{r.json['id']}":
                ck.warnings.append(f"createSession {name}: Location {r.header('location')!r}")
    conv = c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=201, note="conv2d",
             body={"optimizer": "adagrad_diag",
                   "layout": [{"name": "conv", "kind": "conv2d", "shape": [2, 1, 2, 2],
                               "bias": True}]})
    # A state of about 10 KiB: over the second daemon's --memory-budget.
    fat = c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=201, note="10 KiB state",
            body={"optimizer": "adagrad_full",
                  "layout": [{"name": "fc", "kind": "dense", "shape": [6, 6]}]})
    if not ids or len(ids) != len(OPTIMIZERS) or fat is None or not fat.json:
        raise RuntimeError("could not create the sessions the rest of the check needs")
    sid = ids["adagrad_bma"]
    base = f"/v1/sessions/{sid}"
    missing = "/v1/sessions/" + "0" * 32

    # Bad creates.
    good_create = {"optimizer": "sgd", "layout": LAYOUT}
    # (counted with conv and fat in the listing below)
    ttl = c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=201, note="idle TTL",
            body=dict(good_create, idle_ttl_s=86400, name="a run", labels={"run": "x"},
                      history_steps=10))
    if ttl is not None and (not ttl.json or ttl.json.get("idle_ttl_s") != 86400):
        ck.failures.append("createSession idle TTL: idle_ttl_s not echoed")
    if ttl is not None and (not ttl.json or ttl.json.get("history_steps") != 10):
        ck.failures.append("createSession: history_steps not echoed")
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=400, note="TTL not a number",
      body=dict(good_create, idle_ttl_s="1h"))
    c(d, "createSession", "POST", "/v1/sessions", ctype="text/plain", body=good_create,
      expect=415, note="wrong Content-Type")
    c(d, "createSession", "POST", "/v1/sessions", body=good_create, expect=415,
      note="no Content-Type")
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, body='{"optimizer": ', expect=400,
      note="malformed JSON")
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, body="[1, 2]", expect=400,
      note="not an object")
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=400, note="unknown optimizer",
      body={"optimizer": "lbfgs", "layout": LAYOUT})
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=400, note="vector with bias",
      body={"optimizer": "sgd", "layout": [{"name": "v", "kind": "vector", "shape": [2],
                                            "bias": True}]})
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=400, note="empty layout",
      body={"optimizer": "sgd", "layout": []})
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=400, note="unknown config key",
      body={"optimizer": "sgd", "config": {"no_such_knob": 1}, "layout": LAYOUT})
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=400, note="config out of range",
      body={"optimizer": "sgd", "config": {"momentum": 2}, "layout": LAYOUT})
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=422, note="state too large",
      body={"optimizer": "adagrad_full",
            "layout": [{"name": "fc", "kind": "dense", "shape": [3000, 3000]}]})
    big = json.dumps({"optimizer": "sgd", "layout": LAYOUT, "pad": "x" * MAX_BODY}).encode()
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, body=big, expect=413,
      note="Content-Length over --max-body")
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, body=big, expect=413, chunked=True,
      note="chunked body over --max-body")

    # List with pagination: oldest first, every session once.
    r = c(d, "listSessions", "GET", "/v1/sessions", expect=200)
    total = len(r.json["sessions"]) if r is not None and r.json else 0
    seen, token, pages = [], None, 0
    while pages < 20:
        q = "?page_size=3" + (f"&page_token={urllib.parse.quote(token)}" if token else "")
        r = c(d, "listSessions", "GET", "/v1/sessions" + q, expect=200, note=f"page {pages + 1}")
        pages += 1
        if r is None or not r.json:
            break
        seen += [s["id"] for s in r.json["sessions"]]
        token = r.json.get("next_page_token")
        if not token:
            break
    if len(seen) != len(set(seen)) or len(seen) != total or total != len(ids) + 3:
        ck.fail("listSessions pagination", None,
                f"pages gave {len(seen)} ids ({len(set(seen))} distinct), one page {total}, "
                f"created {len(ids) + 3}")
    for q, note in (("page_size=0", "page_size 0"), ("page_size=1001", "page_size 1001"),
                    ("page_size=ten", "page_size not a number"),
                    ("page_token=not-a-token", "bad page_token")):
        c(d, "listSessions", "GET", "/v1/sessions?" + q, expect=400, note=note)

    # Get.
    r = c(d, "getSession", "GET", base, expect=200)
    if r is not None and r.header("etag") != '"0"':
        ck.fail("getSession ETag", r, f"ETag {r.header('etag')!r}, expected '\"0\"'")
    c(d, "getSession", "GET", missing, expect=404, note="unknown id")
    c(d, "getSession", "GET", "/v1/sessions/NOT-AN-ID", expect=404, note="malformed id")

    # Steps on every optimizer: JSON numbers, then b64, then the binary extension.
    for name, i in ids.items():
        c(d, "postStep", "POST", f"/v1/sessions/{i}/steps", ctype=J, body=json_step(1),
          expect=200, note=f"{name} JSON numbers")
    first = c(d, "postStep", "POST", f"{base}/steps", ctype=J, body=json_step(2, 0.5),
              expect=200, note="step 2")
    again = c(d, "postStep", "POST", f"{base}/steps", ctype=J, body=json_step(2, 0.5),
              expect=200, note="replay of step 2")
    if first is not None and again is not None and first.body != again.body:
        ck.fail("postStep replay", again, "the replay differs from the first reply")
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, body=json_step(1), expect=409,
      note="older step")
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, body=json_step(5), expect=409,
      note="step ahead")
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, body=b64_step(3), expect=200,
      note="b64 FP64")
    header, raw = binary_step(4)
    hdr = {"Inference-Header-Content-Length": str(len(header))}
    b1 = c(d, "postStep", "POST", f"{base}/steps", ctype="application/octet-stream", body=raw,
           headers=hdr, expect=200, request_schema="application/json", note="binary extension")
    b2 = c(d, "postStep", "POST", f"{base}/steps", ctype="application/octet-stream", body=raw,
           headers=hdr, expect=200, request_schema="application/json",
           note="binary replay")
    if b1 is not None and b2 is not None and b1.body != b2.body:
        ck.fail("postStep binary replay", b2, "the replay differs from the first reply")
    # Bad steps (session at step 4: step 5 is next).
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, expect=400, note="README's wrong shape",
      body={"step": 5, "gradients": [
          {"name": "fc", "shape": [4, 2], "datatype": "FP32", "data": [0] * 8},
          {"name": "gain", "shape": [2], "datatype": "FP32", "data": [0, 0]}]})
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, expect=400, note="missing block",
      body={"step": 5, "gradients": [json_step(5)["gradients"][0]]})
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, expect=400, note="bad datatype",
      body={"step": 5, "gradients": [dict(t, datatype="FP16")
                                     for t in json_step(5)["gradients"]]})
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, body='{"step": 5, "gradients": [',
      expect=400, note="malformed JSON")
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, expect=400, note="no step number",
      body={"gradients": json_step(5)["gradients"]})
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, expect=400, note="bad base64",
      body={"step": 5, "gradients": [
          {"name": "fc", "shape": [2, 4], "datatype": "FP64", "data": {"b64": "@@@="}},
          json_step(5, dtype="FP64")["gradients"][1]]})
    c(d, "postStep", "POST", f"{base}/steps", ctype="application/octet-stream", body=raw,
      headers={"Inference-Header-Content-Length": str(len(raw) + 1)}, expect=400,
      request_schema=False, note="header length past the body")
    c(d, "postStep", "POST", f"{base}/steps", ctype="text/plain", body=json_step(5),
      expect=415, note="wrong Content-Type")
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, expect=422, note="overflow in data",
      body=json.dumps(json_step(5)).replace("0.01", "1e999"))
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, expect=413, note="shape product overflow",
      body={"step": 5, "gradients": [
          {"name": "fc", "shape": [4294967296, 4294967296, 4294967296], "datatype": "FP32",
           "data": [0]}, json_step(5)["gradients"][1]]})
    big_step = json.dumps(json_step(5)).replace('"step": 5', '"step": 5, "pad": "%s"'
                                                 % ("x" * MAX_BODY)).encode()
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, body=big_step, expect=413,
      note="body over --max-body")
    c(d, "postStep", "POST", f"{missing}/steps", ctype=J, body=json_step(1), expect=404,
      note="unknown session")

    # Patch hyperparameters (ETag "4" after four steps).
    c(d, "patchSession", "PATCH", base, ctype=J, body={"config": {"lr": 0.05}}, expect=200)
    c(d, "patchSession", "PATCH", base, ctype=J, body={"config": {"lr": 0.04}},
      headers={"If-Match": '"4"'}, expect=200, note="If-Match current")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"config": {"lr": 0.03}},
      headers={"If-Match": '"3"'}, expect=412, note="If-Match stale")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"config": {"lr": 0.05}, "x": 1},
      expect=400, note="extra key")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"config": {"lr": [1]}}, expect=400,
      note="bad value")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"config": {"lr": -1}}, expect=400,
      note="out of range")
    c(d, "patchSession", "PATCH", missing, ctype=J, body={"config": {"lr": 0.05}}, expect=404,
      note="unknown id")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"idle_ttl_s": 3600}, expect=200,
      note="idle TTL alone")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"config": {"lr": 0.04}, "idle_ttl_s": None},
      expect=200, note="config and the default TTL")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"idle_ttl_s": -1}, expect=400,
      note="negative TTL")
    c(d, "patchSession", "PATCH", base, ctype=J,
      body={"name": "run 7", "labels": {"run": "exp-7", "team": "a"}}, expect=200,
      note="name and labels")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"labels": {"bad key": "x"}}, expect=400,
      note="bad label key")
    c(d, "listSessions", "GET", "/v1/sessions?label=run=exp-7", expect=200, note="by label")
    c(d, "listSessions", "GET", "/v1/sessions?label=noequals", expect=400, note="bad label filter")
    c(d, "patchSession", "PATCH", missing, ctype=J, body={"idle_ttl_s": 0}, expect=404,
      note="TTL of an unknown id")
    c(d, "patchSession", "PATCH", base, ctype="text/plain", body={"config": {"lr": 0.05}},
      expect=415, note="wrong Content-Type")
    big_patch = json.dumps({"config": {"lr": 0.05, "pad": "x" * MAX_BODY}}).encode()
    c(d, "patchSession", "PATCH", base, ctype=J, body=big_patch, expect=413,
      note="body over --max-body")
    r = c(d, "getSession", "GET", base, expect=200, note="after patch")
    if r is not None and r.json and (r.json.get("step") != 4
                                     or r.json["config"].get("lr") != 0.04
                                     or (r.json.get("last_step") or {}).get("step") != 4):
        ck.fail("getSession after patch", r, "expected step 4, lr 0.04 and last_step 4")

    # The step history: four steps kept, paged by since.
    r = c(d, "listSteps", "GET", f"{base}/steps", expect=200)
    if r is not None and r.json and [e["step"] for e in r.json["steps"]] != [1, 2, 3, 4]:
        ck.fail("listSteps", r, "expected steps 1-4")
    r = c(d, "listSteps", "GET", f"{base}/steps?page_size=3", expect=200, note="a page")
    if r is not None and r.json and r.json.get("next_since") != 3:
        ck.fail("listSteps page", r, "expected next_since 3")
    c(d, "listSteps", "GET", f"{base}/steps?since=3&page_size=1000", expect=200, note="since")
    c(d, "listSteps", "GET", f"{base}/steps?page_size=0", expect=400, note="page_size 0")
    c(d, "listSteps", "GET", f"{base}/steps?since=-1", expect=400, note="negative since")
    c(d, "listSteps", "GET", f"{missing}/steps", expect=404, note="unknown session")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"history_steps": 2}, expect=200,
      note="history bound")
    r = c(d, "listSteps", "GET", f"{base}/steps", expect=200, note="after lowering the bound")
    if r is not None and r.json and (r.json.get("oldest_step") != 3 or len(r.json["steps"]) != 2):
        ck.fail("listSteps after PATCH", r, "expected steps 3-4 only")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"history_steps": None}, expect=200,
      note="history bound: the default")
    c(d, "patchSession", "PATCH", base, ctype=J, body={"history_steps": -1}, expect=400,
      note="negative history bound")
    c(d, "dashboard", "GET", "/ui", expect=200)
    c(d, "dashboardFile", "GET", "/ui/app.js", expect=200, note="script")
    c(d, "dashboardFile", "GET", "/ui/style.css", expect=200, note="style sheet")
    c(d, "dashboardFile", "GET", "/ui/nothing.js", expect=404, note="unknown file")

    # Callbacks: no optimizer of this version asks for one.
    c(d, "answerCallback", "POST", f"{base}/steps/5/callbacks/cb1", ctype=J,
      body={"values": {"name": "v", "shape": [1], "datatype": "FP64", "data": [1.0]}},
      expect=409, good=False, note="no callback pending")
    c(d, "answerCallback", "POST", f"{missing}/steps/1/callbacks/cb1", ctype=J,
      body={"values": {"name": "v", "shape": [1], "datatype": "FP64", "data": [1.0]}},
      expect=404, note="unknown session")
    c(d, "answerCallback", "POST", f"{base}/steps/5/callbacks/cb1", ctype=J,
      body=json.dumps({"values": {"name": "v", "shape": [1], "datatype": "FP64",
                                  "data": [1.0]}, "pad": "x" * MAX_BODY}),
      expect=413, note="body over --max-body")

    # Export and import.
    r = c(d, "exportSession", "GET", f"{base}/state", expect=200)
    blob = r.body if r is not None else b""
    c(d, "exportSession", "GET", f"{missing}/state", expect=404, note="unknown id")
    r = c(d, "importSession", "POST", "/v1/sessions:import", ctype="application/octet-stream",
          body=blob, expect=201)
    if r is not None and r.json:
        if r.json.get("step") != 4 or r.json.get("id") == sid:
            ck.fail("importSession", r, "expected a new id at step 4")
        c(d, "postStep", "POST", f"/v1/sessions/{r.json['id']}/steps", ctype=J,
          body=json_step(4), expect=409, note="imported: no stored reply to replay")
        c(d, "postStep", "POST", f"/v1/sessions/{r.json['id']}/steps", ctype=J,
          body=json_step(5), expect=200, note="imported: next step")
    c(d, "importSession", "POST", "/v1/sessions:import", ctype=J, body=blob, expect=415,
      request_schema=False, note="wrong Content-Type")
    c(d, "importSession", "POST", "/v1/sessions:import", ctype="application/octet-stream",
      body=b"not a libcurv state blob", expect=400, note="garbage")
    c(d, "importSession", "POST", "/v1/sessions:import", ctype="application/octet-stream",
      body=blob[:-1] + bytes([blob[-1] ^ 1]) if blob else b"x", expect=400,
      note="corrupted checksum")
    c(d, "importSession", "POST", "/v1/sessions:import", ctype="application/octet-stream",
      body=b"\0" * (MAX_BODY + 1), expect=413, note="body over --max-body")

    # Delete.
    c(d, "deleteSession", "DELETE", base, expect=204)
    c(d, "deleteSession", "DELETE", base, expect=404, note="again")
    c(d, "getSession", "GET", base, expect=404, note="deleted")
    c(d, "exportSession", "GET", f"{base}/state", expect=404, note="deleted")
    c(d, "postStep", "POST", f"{base}/steps", ctype=J, body=json_step(5), expect=404,
      note="deleted")
    if conv is not None and conv.json:
        c(d, "deleteSession", "DELETE", f"/v1/sessions/{conv.json['id']}", expect=204,
          note="conv2d")
    r = c(d, "exportSession", "GET", f"/v1/sessions/{fat.json['id']}/state", expect=200,
          note="10 KiB state")
    fat_blob = r.body if r is not None else b""

    # No route: unknown path and unknown method.
    c(d, None, "GET", "/v2/nothing", expect=404, note="unknown path")
    for method, path in (("PUT", "/v1/sessions"), ("DELETE", "/healthz"),
                         ("POST", f"/v1/sessions/{ids['sgd']}/state")):
        r = c(d, None, method, path, expect=405, note="method not allowed")
        if r is not None and r.status == 405 and not r.header("allow"):
            w = f"405 for {method} {path} has no Allow header (RFC 9110 section 15.5.6)"
            if w not in ck.warnings:
                ck.warnings.append(w)
    return fat_blob


def auth_scenario(ck, d, fat_blob):
    """--token-file: /v1 needs a bearer token, each token a tenant; and a
    --memory-budget below a 10 KiB state."""
    J = "application/json"
    c = ck.check
    alice = {"Authorization": f"Bearer {TOKENS['alice']}"}
    bob = {"Authorization": f"Bearer {TOKENS['bob']}"}
    c(d, "healthz", "GET", "/healthz", expect=200, note="auth on, no token")
    c(d, "listSessions", "GET", "/v1/sessions", expect=401, note="no token")
    c(d, "listSessions", "GET", "/v1/sessions", expect=401, note="unknown token",
      headers={"Authorization": "Bearer not-a-known-token-0000"})
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, expect=401, note="no token",
      body={"optimizer": "sgd", "layout": LAYOUT})
    r = c(d, "createSession", "POST", "/v1/sessions", ctype=J, headers=alice, expect=201,
          note="alice", body={"optimizer": "sgd", "layout": LAYOUT})
    if r is None or not r.json:
        return
    path = f"/v1/sessions/{r.json['id']}"
    c(d, "getSession", "GET", path, headers=alice, expect=200, note="alice")
    c(d, "getSession", "GET", path, headers=bob, expect=404, note="bob: another tenant's")
    r = c(d, "listSessions", "GET", "/v1/sessions", headers=bob, expect=200, note="bob")
    if r is not None and r.json and r.json["sessions"]:
        ck.fail("listSessions bob", r, "bob sees alice's sessions")
    c(d, "getVersion", "GET", "/v1/version", expect=401, note="no token")
    c(d, "getSession", "GET", path, expect=401, note="no token")
    c(d, "postStep", "POST", f"{path}/steps", ctype=J, body=json_step(1), expect=401,
      good=False, note="no token")
    c(d, "patchSession", "PATCH", path, ctype=J, body={"config": {"lr": 0.05}}, expect=401,
      good=False, note="no token")
    c(d, "exportSession", "GET", f"{path}/state", expect=401, note="no token")
    c(d, "listSteps", "GET", f"{path}/steps", expect=401, note="no token")
    c(d, "listSteps", "GET", f"{path}/steps", headers=bob, expect=404,
      note="bob: another tenant's")
    c(d, "listSteps", "GET", f"{path}/steps", headers=alice, expect=200, note="alice")
    c(d, "dashboard", "GET", "/ui", expect=200, note="no token: the page asks for one")
    c(d, "importSession", "POST", "/v1/sessions:import", ctype="application/octet-stream",
      body=fat_blob, expect=401, good=False, note="no token")
    c(d, "answerCallback", "POST", f"{path}/steps/1/callbacks/cb1", ctype=J, expect=401,
      body={"values": {"name": "v", "shape": [1], "datatype": "FP64", "data": [1.0]}},
      good=False, note="no token")
    c(d, "deleteSession", "DELETE", path, expect=401, note="no token")
    c(d, "deleteSession", "DELETE", path, headers=bob, expect=404, note="bob: another tenant's")
    c(d, "deleteSession", "DELETE", path, headers=alice, expect=204, note="alice")
    c(d, "createSession", "POST", "/v1/sessions", ctype=J, headers=alice, expect=422,
      note="state over --memory-budget",
      body={"optimizer": "adagrad_full",
            "layout": [{"name": "fc", "kind": "dense", "shape": [6, 6]}]})
    c(d, "importSession", "POST", "/v1/sessions:import", ctype="application/octet-stream",
      headers=alice, body=fat_blob, expect=422, note="state over --memory-budget")


def drain_scenario(ck, d):
    """SIGTERM: /readyz turns 503 for a connection that is still open."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        ck.check(d, "readyz", "GET", "/readyz", expect=200, conn=conn, note="keep-alive")
        d.proc.send_signal(signal.SIGTERM)
        if not d.draining.wait(5):
            ck.warnings.append("the daemon did not log 'draining' within 5 s; "
                               "/readyz 503 unchecked")
            return
        try:
            reply = ck.send(d, "GET", "/readyz", conn=conn)
        except (OSError, http.client.HTTPException) as e:  # closed before it could answer
            ck.warnings.append(f"/readyz while draining got no reply ({e!r}); 503 unchecked")
            return
        if ck.check_reply(d, "readyz GET /readyz [draining]", "readyz", reply, 503):
            ck.valid += 1
    finally:
        conn.close()


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    binary = os.path.abspath(argv[1])
    if not os.access(binary, os.X_OK):
        print(f"spec-check: {binary} is not an executable (make build/curvd)", file=sys.stderr)
        return 2
    # SIGTERM/SIGINT still stop the daemons and remove the folder (finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    spec = Spec(load_spec())
    t0 = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="curvd-spec-check-")
    ck = None
    try:
        ck = run(binary, workdir, spec)
    except RuntimeError as e:
        print(f"spec-check: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    missed = sorted(set(spec.ops) - set(ck.covered))
    for op in missed:
        m, p, _ = spec.ops[op]
        ck.failures.append(f"FAIL {op} ({m} {p}) was never exercised")
        print(ck.failures[-1])
    never = []
    for op, (m, p, o) in spec.ops.items():
        for st in o.get("responses", {}):
            if st.isdigit() and int(st) not in ck.covered.get(op, ()):
                never.append(f"{op} {st}")
    if never:
        print(f"note: declared but not produced here: {', '.join(never)}")
    for w in ck.warnings:
        print(f"warning: {w}")
    n_ops = len(set(ck.covered) & set(spec.ops))
    secs = time.monotonic() - t0
    print(f"note: {secs:.1f} s")
    if ck.failures:
        print(f"spec-check: {len(ck.failures)} mismatches; {ck.valid} responses valid, "
              f"{n_ops} of {len(spec.ops)} operations covered")
        return 1
    print(f"spec-check: {ck.valid} responses valid, {n_ops} operations covered")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
