#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Strict JSON types, generated from the contract (issue 21).

Usage: /usr/bin/python3 tests/server/spec_types.py build/curvd

For every JSON request body of api/openapi.yaml (create, PATCH, step,
callback answer) it takes a valid body, walks the body's schema and, for
every property it can reach (nested objects, the first element of arrays,
and absent optional members at their place), sends the body with that
property replaced by each value of a JSON type the schema does not admit
(a boolean where a number goes, a number where a boolean goes, a string,
null, an array, an object). For every object the schema closes
(additionalProperties: false) it sends the body with one unknown member
more. Every hyperparameter GET /v1/version lists is sent, at create, with
each JSON type its parameter type does not take.

Each such request must be refused with a 4xx the operation declares,
application/problem+json whose errors[0].path names the member (or the
array holding the element), UNKNOWN_MEMBER for the unknown ones; and none
may change anything: the fixture sessions' exported states, their steps
and the number of sessions are compared after every request. The responses
are also validated against the spec (spec_check.py's checker).

The cases come from the spec alone, so that the spec and the daemon cannot
drift apart: a property added to a schema is covered the day it lands.
Prints one line per failure and "spec-types: N cases, all refused as
documented" at the end; exits 1 on any failure, 2 on a usage or start-up
error.
"""

import copy
import json
import os
import sys
import tempfile
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spec_check as sc  # noqa: E402  (its Daemon, Checker and spec loader)

J = "application/json"
# One value of each JSON type, booleans first (the lenient reading the
# issue found: true taken for 1.0).
SAMPLES = (("boolean", True), ("integer", 7), ("number", 1.5), ("string", "x"),
           ("null", None), ("array", []), ("object", {}))
UNKNOWN = "zz_not_in_the_schema"
DENSE = {"name": "fc", "kind": "dense", "shape": [2, 3], "bias": True}
VECTOR = {"name": "gain", "kind": "vector", "shape": [2]}


def resolve(spec, s):
    """@s with $ref followed and a lone allOf merged in."""
    while isinstance(s, dict) and ("$ref" in s or len(s.get("allOf", ())) == 1):
        if "$ref" in s:
            node = spec
            for part in s["$ref"].lstrip("#/").split("/"):
                node = node[part]
            s = dict(node, **{k: v for k, v in s.items() if k != "$ref"})
        else:
            rest = {k: v for k, v in s.items() if k != "allOf"}
            s = dict(resolve(spec, s["allOf"][0]), **rest)
    return s


def types_of(spec, s):
    """The JSON types @s admits, or None when it admits any."""
    s = resolve(spec, s)
    if "type" in s:
        t = s["type"]
        return set(t) if isinstance(t, list) else {t}
    alts = s.get("oneOf") or s.get("anyOf")
    if alts:
        out = set()
        for a in alts:
            t = types_of(spec, a)
            if t is None:
                return None
            out |= t
        return out
    return None


def admits(types, name):
    return name in types or (name == "integer" and "number" in types)


def wrong_values(types):
    return [v for name, v in SAMPLES if not admits(types, name)]


def tensor(name, shape, values):
    return {"name": name, "shape": shape, "datatype": "FP64", "data": values}


def step_tensors(scale=1.0):
    return [tensor("fc", [2, 4], [scale * x for x in (0.5, -0.25, 1, 2, 0.125, 3, -1, 0.75)]),
            tensor("gain", [2], [0.01 * scale, -0.02 * scale])]


def squares():
    """Squared gradients (non-negative), the form of step_tensors()."""
    return [dict(t, data=[x * x for x in t["data"]]) for t in step_tensors()]


def walk(spec, s, value, ptr, out):
    """(pointer, schema, is_present) of every property under @value, and
    ('unknown', pointer) for every closed object."""
    s = resolve(spec, s)
    if isinstance(value, dict):
        props = s.get("properties", {})
        if s.get("additionalProperties") is False:
            out.append(("unknown", ptr))
        for name, ps in props.items():
            child = ptr + sc.pointer(name)
            out.append(("type", child, ps))
            if name in value:
                walk(spec, ps, value[name], child, out)
        extra = s.get("additionalProperties")
        if isinstance(extra, dict):
            for name in value:
                if name not in props:
                    out.append(("type", ptr + sc.pointer(name), extra))
    elif isinstance(value, list) and value and isinstance(s.get("items"), dict):
        items = s["items"]
        out.append(("type", ptr + "/0", items))
        walk(spec, items, value[0], ptr + "/0", out)


def put(body, ptr, value):
    """A copy of @body with the member at JSON pointer @ptr set to @value."""
    body = copy.deepcopy(body)
    parts = [p.replace("~1", "/").replace("~0", "~") for p in ptr.split("/")[1:]]
    node = body
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


def names(path, ptr):
    """errors[0].path names the member at @ptr: the member itself, or the
    array that holds it when @ptr is an element."""
    if path == ptr:
        return True
    trimmed = ptr
    while trimmed.rsplit("/", 1)[-1].isdigit():
        trimmed = trimmed.rsplit("/", 1)[0]
        if path == trimmed:
            return True
    return False


class Run:
    def __init__(self, spec, d):
        self.spec, self.d = spec, d
        self.ck = sc.Checker(spec)
        self.cases = 0
        self.failures = []
        self.fixtures = []  # session ids whose state must not change

    def request(self, method, path, body=None):
        raw = json.dumps(body).encode() if body is not None else None
        return self.ck.send(self.d, method, path, raw, {"Content-Type": J} if raw else {})

    def snapshot(self):
        """What no refused request may change: each fixture's exported
        state, step and pending callback, and the number of sessions."""
        out = []
        for sid in self.fixtures:
            r = self.request("GET", f"/v1/sessions/{sid}/state")
            s = json.loads(self.request("GET", f"/v1/sessions/{sid}").body)
            out.append((r.status, r.body, s.get("step"), s.get("pending_callback"),
                        s.get("config"), s.get("name"), s.get("labels"), s.get("idle_ttl_s")))
        lst = self.request("GET", "/v1/sessions?page_size=1000")
        out.append(len(json.loads(lst.body)["sessions"]))
        return out

    def fail(self, what, r, why):
        body = r.body[:300].decode("utf-8", "replace") if r is not None else ""
        self.failures.append(f"FAIL {what}: {why}: {body}")
        print(self.failures[-1])

    def refuse(self, op, method, path, body, ptr, unknown, before):
        """Send @body; it must be refused naming @ptr, and change nothing."""
        self.cases += 1
        what = f"{op} {'unknown member' if unknown else 'type of'} {ptr} = " \
               f"{json.dumps(sc_get(body, ptr))[:40]}"
        r = self.request(method, path, body)
        if not self.ck.check_reply(self.d, what, op, r, (400, 422)):
            return  # the checker said why (status not declared, or off the schema)
        doc = None
        try:
            doc = json.loads(r.body)
        except ValueError:
            pass
        errors = (doc or {}).get("errors") or [{}]
        if r.ctype != "application/problem+json" or not isinstance(doc, dict):
            self.fail(what, r, "not a problem document")
        elif unknown and doc.get("reason") != "UNKNOWN_MEMBER":
            self.fail(what, r, f"reason {doc.get('reason')}, want UNKNOWN_MEMBER")
        elif not names(errors[0].get("path"), ptr):
            self.fail(what, r, f"errors[0].path {errors[0].get('path')!r} does not name {ptr}")
        elif self.snapshot() != before:
            self.fail(what, r, "the request changed a session or the session count")

    def generate(self, op, method, path, schema, base):
        spec = self.spec.doc
        found = []
        walk(spec, schema, base, "", found)
        before = self.snapshot()
        for item in found:
            if item[0] == "unknown":
                ptr = item[1] + sc.pointer(UNKNOWN)
                self.refuse(op, method, path, put(base, ptr, 1), ptr, True, before)
                continue
            _, ptr, ps = item
            types = types_of(spec, ps)
            if types is None:
                continue
            for v in wrong_values(types):
                self.refuse(op, method, path, put(base, ptr, v), ptr, False, before)

    def config_types(self, base, versions):
        """Every hyperparameter of every optimizer, each wrong JSON type."""
        takes = {"real": {"number"}, "int": {"integer"}, "bool": {"boolean"},
                 "enum": {"string"}, "list": {"string"}}
        before = self.snapshot()
        for o in versions["optimizers"]:
            for p in o["params"]:
                for v in wrong_values(takes[p["type"]]):
                    body = dict(base, optimizer=o["name"], config={p["name"]: v})
                    ptr = "/config" + sc.pointer(p["name"])
                    self.refuse("createSession", "POST", "/v1/sessions", body, ptr, False, before)


def count(data):
    """Numbers in @data, nested or flat."""
    return sum(count(x) for x in data) if isinstance(data, list) else 1


def sc_get(body, ptr):
    node = body
    for p in [p.replace("~1", "/").replace("~0", "~") for p in ptr.split("/")[1:]]:
        node = node[int(p)] if isinstance(node, list) else node.get(p)
    return node


def scenario(run):
    spec = run.spec.doc
    layout = [DENSE, VECTOR]
    create = {"optimizer": "sgd", "config": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
              "layout": layout, "idle_ttl_s": 3600, "name": "run", "labels": {"team": "a"}}
    # The base create body is valid: the session it makes is the fixture.
    r = run.request("POST", "/v1/sessions", create)
    if r.status != 201:
        raise RuntimeError(f"the base create body is refused: {r.status} {r.body[:300]!r}")
    sid = json.loads(r.body)["id"]
    hf = run.request("POST", "/v1/sessions", {"optimizer": "hf", "layout": layout})
    hid = json.loads(hf.body)["id"]
    step1 = {"step": 1, "gradients": step_tensors()}
    if run.request("POST", f"/v1/sessions/{sid}/steps", step1).status != 200:
        raise RuntimeError("the fixture's step 1 failed")
    pending = run.request("POST", f"/v1/sessions/{hid}/steps",
                          dict(step1, loss=1.0, grad_sq=squares()))
    if pending.status != 202:
        raise RuntimeError(f"hf step 1 did not call back: {pending.status} {pending.body[:300]!r}")
    cb = json.loads(pending.body)["callback"]
    run.fixtures = [sid, hid]

    versions = json.loads(run.request("GET", "/v1/version").body)
    ops = {(m, p): op for p, item in spec["paths"].items() for m, op in item.items()
           if isinstance(op, dict) and "requestBody" in op}
    step_base = {"step": 2, "gradients": step_tensors(), "params": step_tensors(2.0),
                 "grad_sq": squares(),
                 "layers": [{"block": "fc", "examples": 1,
                             "activations": tensor("a", [1, 3], [0.1, 0.2, 0.3]),
                             "signals": tensor("s", [1, 2], [0.4, 0.5])}],
                 "loss": 0.5, "batch": 4}
    answer = {"products": [[tensor(t["name"], t["shape"], [0.0] * count(t["data"]))
                            for t in vec] for vec in cb["vectors"]]}
    bases = {
        ("post", "/v1/sessions"): ("/v1/sessions", create),
        ("patch", "/v1/sessions/{id}"): (f"/v1/sessions/{sid}",
                                        {"config": {"lr": 0.05}, "idle_ttl_s": 60,
                                         "name": "other", "labels": {"team": "b"}}),
        ("post", "/v1/sessions/{id}/steps"): (f"/v1/sessions/{sid}/steps", step_base),
        ("post", "/v1/sessions/{id}/steps/{n}/callbacks/{cb}"): (cb["url"], answer),
    }
    for (method, tmpl), op in sorted(ops.items()):
        schema = (op["requestBody"]["content"].get(J) or {}).get("schema")
        if schema is None:
            continue  # not a JSON body (import takes a blob)
        if (method, tmpl) not in bases:
            run.failures.append(f"FAIL {op['operationId']}: a JSON request body with no base "
                                "body here: add one to tests/server/spec_types.py")
            print(run.failures[-1])
            continue
        path, base = bases[(method, tmpl)]
        run.generate(op["operationId"], method.upper(), path, schema, base)
    run.config_types({"layout": layout}, versions)


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    spec = sc.Spec(sc.load_spec())
    work = tempfile.mkdtemp(prefix="curvd-spec-types-")
    d = None
    try:
        d = sc.Daemon(os.path.abspath(argv[1]), work, "types")
        run = Run(spec, d)
        scenario(run)
    except RuntimeError as e:
        print(f"spec-types: {e}")
        return 2
    finally:
        if d is not None:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)
    failed = len(run.failures) + len(run.ck.failures)
    if failed:
        print(f"spec-types: {failed} of {run.cases} cases failed")
        return 1
    print(f"spec-types: {run.cases} cases, all refused as documented")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
