"""docs/SERVER.md's "Limits and statuses" section against the C sources (no server, no build).

Every message a client can get is taken from the code on the request path -- the string literals
passed to reply(), vt_fail(), malformed(), FAIL(), grpc_call_cancel_with_status() and
snprintf() into a message buffer, and assigned to a `why` -- and must appear in the section, in
order, with each printf conversion standing for any text (the doc writes `<field>`, `<n>`, ...).
Every gRPC status code serve/server.c uses must be in one of the section's tables, every HTTP
status of the metrics port with its reason phrase, and the fixed limits with their values."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "SERVER.md")
SECTION = "## Limits and statuses"

# What carries a client-visible message, file by file: functions whose literal arguments are
# messages, snprintf() destinations that are message buffers, and variables assigned a message.
SOURCES = {
    "serve/server.c": {"calls": {"reply", "grpc_call_cancel_with_status"},
                      "snprintf": {"msg"}, "assign": {"why"}},
    "serve/sched.c": {"calls": set(), "snprintf": {"msg"}, "assign": set()},
    "serve/wire.c": {"calls": {"vt_fail", "malformed"}, "snprintf": {"why", "w"},
                    "assign": {"why"}},
    "serve/pbwire.c": {"calls": {"FAIL"}, "snprintf": set(), "assign": {"why"}},
    "engine/request.c": {"calls": {"vt_fail"}, "snprintf": set(), "assign": set()},
    "serve/httpd.c": {"calls": {"answer"}, "snprintf": set(), "assign": set()},
}

# <inttypes.h> macros that end a format inside a literal run ("... not %" PRId32)
INTTYPES = {"PRId32": "d", "PRId64": "ld", "PRIu32": "u", "PRIu64": "lu", "PRIx64": "lx",
            "PRIi32": "i", "PRIi64": "li"}

CONVERSION = re.compile(
    r"%%|%[-+ #0]*(?:\*|\d+)?(?:\.(?:\*|\d+))?(?:hh|h|ll|l|z|j|t|L)?[diouxXeEfgGcsp]")
ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def tokenize(src):
    """C tokens as (kind, text, line): kind 'str' (text unescaped), 'id', 'num' or 'op'.
    Comments, character literals and preprocessor lines are skipped; string macros
    (#define NAME "text") are returned separately."""
    macros = {}
    for m in re.finditer(r'^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+("(?:[^"\\\n]|\\.)*")', src, re.M):
        macros[m.group(1)] = unescape(m.group(2)[1:-1])
    toks, i, n, line, bol = [], 0, len(src), 1, True
    while i < n:
        c = src[i]
        if c == "\n":
            line, bol, i = line + 1, True, i + 1
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        if bol and c == "#":  # a directive, with its continuation lines
            while i < n and src[i] != "\n":
                if src[i] == "\\" and i + 1 < n and src[i + 1] == "\n":
                    line += 1
                    i += 1
                i += 1
            continue
        bol = False
        if src.startswith("/*", i):
            j = src.index("*/", i + 2)
            line += src.count("\n", i, j)
            i = j + 2
        elif src.startswith("//", i):
            i = src.find("\n", i)
            i = n if i < 0 else i
        elif c in "\"'":
            j = i + 1
            while src[j] != c:
                j += 2 if src[j] == "\\" else 1
            if c == '"':
                toks.append(("str", unescape(src[i + 1:j]), line))
            i = j + 1
        elif c.isalpha() or c == "_":
            m = re.compile(r"\w+").match(src, i)
            toks.append(("id", m.group(0), line))
            i = m.end()
        elif c.isdigit():
            m = re.compile(r"[\w.]+").match(src, i)
            toks.append(("num", m.group(0), line))
            i = m.end()
        else:
            op = next((o for o in ("->", "==", "!=", "<=", ">=", "&&", "||", "<<", ">>", "++",
                                   "--", "+=", "-=", "*=", "/=", "|=", "&=")
                       if src.startswith(o, i)), c)
            toks.append(("op", op, line))
            i += len(op)
    return toks, macros


def unescape(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            if s[i + 1] == "x":
                m = re.compile(r"[0-9a-fA-F]+").match(s, i + 2)
                out.append(chr(int(m.group(0), 16)))
                i = m.end()
                continue
            out.append(ESCAPES.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def literal_runs(toks, macros):
    """The messages in a token list: adjacent literals (and string macros between them) joined,
    as C joins them."""
    runs, cur = [], None
    for kind, text, line in toks:
        if kind == "str":
            cur = cur or ["", line]
            cur[0] += text
        elif cur is not None and kind == "id" and (text in macros or text in INTTYPES):
            cur[0] += macros.get(text) or INTTYPES[text]
        elif cur is not None:
            runs.append(tuple(cur))
            cur = None
    if cur is not None:
        runs.append(tuple(cur))
    return runs


def until_close(toks, i):
    """The tokens from toks[i] (just after an opening parenthesis) to its closing one."""
    depth, j = 1, i
    while depth:
        depth += {"(": 1, ")": -1}.get(toks[j][1], 0) if toks[j][0] == "op" else 0
        j += 1
    return toks[i:j - 1]


def messages(rel):
    """(line, message template) for each client message in rel."""
    toks, macros = tokenize(read(rel))
    want = SOURCES[rel]
    found = []
    for i, (kind, text, _) in enumerate(toks):
        if kind != "id" or i + 1 >= len(toks):
            continue
        nxt = toks[i + 1][1]
        args = None
        if nxt == "(" and text in want["calls"]:
            args = until_close(toks, i + 2)
        elif nxt == "(" and text == "snprintf" and want["snprintf"]:
            args = until_close(toks, i + 2)
            comma = next(k for k, t in enumerate(args) if t[1] == ",")
            dest = [t[1] for t in args[:comma] if t[0] == "id"]
            args = args if dest and dest[-1] in want["snprintf"] else None
        elif nxt == "=" and text in want["assign"]:
            j = i + 2
            while toks[j][1] != ";":
                j += 1
            args = toks[i + 2:j]
        if args:
            found += [(line, m.strip()) for m, line in literal_runs(args, macros)]
    # a bare conversion ("%s" passing another message on) is no text of its own
    return sorted({(ln, m) for ln, m in found
                   if re.search(r"[A-Za-z]{2}", CONVERSION.sub("", m))})


def pattern(template):
    """A regular expression for the message as documented: each conversion is any text on the
    same line (`<field>` in the doc)."""
    parts, pos = [], 0
    for m in CONVERSION.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        parts.append("%" if m.group(0) == "%%" else r".+?")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


def section():
    doc = read("docs/SERVER.md")
    assert SECTION + "\n" in doc, f"docs/SERVER.md has no '{SECTION}' section"
    start = doc.index(SECTION + "\n")
    end = doc.find("\n## ", start + len(SECTION))
    return doc[start:end if end > 0 else len(doc)]


def table_rows(text):
    return [ln for ln in text.splitlines() if ln.startswith("|")]


def cells(row):
    return [c.strip() for c in row.strip().strip("|").split(" | ")]


ALL = [(rel, line, msg) for rel in SOURCES for line, msg in messages(rel)]


def test_the_extraction_finds_the_messages():
    """Guards the extractor itself: it must see the messages known to be there."""
    got = {m for _, _, m in ALL}
    for known in ("overloaded: the request queue is full; nothing was computed, retry with backoff",
                  "unknown method",
                  "the deadline passed before compute",
                  "events: %zu events, more than the maximum of %d per request",
                  "%s is missing or 0: a Unix time in seconds, 1..9007199254740991, is required",
                  "priority must be PRIORITY_NORMAL (0) or PRIORITY_HIGH (1), not %d",
                  "truncated varint",
                  "the %s-compressed request is truncated",
                  'unknown service: "" and "vitrine.v1.Storefront" (readiness) and "liveness" are known',
                  "not found: the metrics are at /metrics"):
        assert known in got, f"the extractor no longer finds {known!r}"
    assert len(ALL) >= 60, len(ALL)


@pytest.mark.parametrize("rel,line,msg", ALL, ids=[f"{r}:{ln}" for r, ln, _ in ALL])
def test_message_documented(rel, line, msg):
    text = section()
    assert pattern(msg).search(text), (
        f"{rel}:{line} sends {msg!r}, which docs/SERVER.md's '{SECTION}' does not list "
        "(write it verbatim, a conversion such as %s as <name>)")


def test_every_grpc_status_in_a_status_table():
    codes = sorted(set(re.findall(r"\bGRPC_STATUS_([A-Z_]+)", read("serve/server.c"))))
    assert "INVALID_ARGUMENT" in codes and "UNAVAILABLE" in codes, codes
    rows = "\n".join(table_rows(section()))
    missing = [c for c in codes if not re.search(r"^\| `" + c + "`", rows, re.M)]
    assert not missing, f"status codes serve/server.c uses but no status table row starts with: {missing}"


def test_every_http_status_documented():
    toks, _ = tokenize(read("serve/httpd.c"))
    answers = []
    for i, (kind, text, _) in enumerate(toks):
        if kind == "id" and text == "answer" and toks[i + 1][1] == "(":
            args = until_close(toks, i + 2)
            nums = [t[1] for t in args if t[0] == "num"]
            strs = [t[1] for t in args if t[0] == "str"]
            if nums and strs:  # the calls, not the definition
                answers.append(f"{nums[0]} {strs[0]}")
    assert "404 Not Found" in answers and len(answers) >= 6, answers
    rows = "\n".join(table_rows(section()))
    missing = [a for a in answers if f"| `{a}` |" not in rows]
    assert not missing, f"metrics-port answers not in the HTTP status table: {missing}"


def defines(rel, names):
    src = read(rel)
    out = {}
    for name in names:
        m = re.search(r"^#define\s+" + name + r"\s+(\d+)", src, re.M)
        assert m, f"{rel} no longer defines {name}"
        out[name] = m.group(1)
    return out


FIXED = [("serve/server.c", ["MAX_ID_BYTES"]),
         ("serve/pbwire.h", ["VT_PB_MAX_DEPTH"]),
         ("engine/request.h", ["VT_MAX_QUERY_TOKENS"]),
         ("serve/httpd.h", ["VT_HTTPD_MAX_CONNS", "VT_HTTPD_HEAD_MAX", "VT_HTTPD_REQUEST_MS",
                           "VT_HTTPD_TOTAL_MS"])]


@pytest.mark.parametrize("rel,names", FIXED, ids=[r for r, _ in FIXED])
def test_fixed_limits_documented(rel, names):
    all_cells = [c for r in table_rows(section()) for c in cells(r)]
    for name, value in defines(rel, names).items():
        assert any(f"`{name}`" in c and re.search(r"\b" + value + r"\b", c) for c in all_cells), (
            f"no limits table cell gives `{name}` with its value {value} ({rel})")


LIMIT_OPTIONS = ["--max-message-bytes", "--max-request-events", "--queue-capacity",
                 "--drain-timeout-ms"]


@pytest.mark.parametrize("flag", LIMIT_OPTIONS)
def test_option_limit_defaults_documented(flag):
    src = read("serve/serve.c")
    m = re.search(r'\{"' + re.escape(flag) + r'",\s*"\w+",\s*"N",\s*(?:"(?:[^"\\]|\\.)*"\s*)+,'
                  r"\s*NULL,\s*([^,]+),\s*([^,]+),\s*([^,}]+)\}", src)
    assert m, f"serve/serve.c: cannot read the option table entry of {flag}"

    def num(expr):
        expr = expr.strip().replace("INT_MAX", str(2**31 - 1))
        assert re.fullmatch(r"[\d\s<()+*-]+", expr), expr
        return eval(expr)  # digits and shifts only (checked above)

    default = num(m.group(1))
    # the limits table: limit | value (default) | changed by | when exceeded
    limits = section().split("### Input limits\n", 1)[-1].split("\n### ", 1)[0]
    rows = [cells(r) for r in table_rows(limits)]
    rows = [c for c in rows if len(c) == 4 and f"`{flag}`" in c[2]]
    assert rows, f"no limits table row is changed by {flag}"
    for c in rows:
        assert re.search(r"\b" + str(default) + r"\b", c[1]), (
            f"{flag}: the default {default} is not the value of the limit '{c[0]}'")
