#!/usr/bin/env bash
# Checks, without doxygen, that the header documents its whole C surface:
#
#   scripts/check-docs.sh [HEADER]          # default include/microsandbox_agent.h
#
# - every function declaration is directly preceded by a /** ... */ comment;
# - a function handing out an owned object through `struct msb_T **x_out`
#   names who releases it (`msb_T_free`, or "ownership" when it refers to a
#   sibling's rules);
# - a function returning a pointer says how long it lives ("Borrowed",
#   "valid until", "Static", "never free");
# - every *_free function says what it does with NULL;
# - every opaque handle type documents its thread safety.
# Also checks that every symbol in symbols/exported-symbols.txt is declared,
# so an export cannot escape these checks by missing from the header.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
exec python3 - "${1:-$top/include/microsandbox_agent.h}" "$top/symbols/exported-symbols.txt" <<'PY'
import re
import sys

header_path, symbols_path = sys.argv[1], sys.argv[2]
text = open(header_path, encoding="utf-8").read()
problems = []

# A doc comment, optional whitespace, then one declaration up to ';'.
# Walk the file in order so each declaration sees the comment right above it.
token = re.compile(r"/\*\*(?P<doc>.*?)\*/|(?P<decl>^[A-Za-z_][^;{}#/]*?;)", re.S | re.M)
function_decl = re.compile(r"(?P<ret>[\w\s\*]+?)\b(?P<name>msb_\w+)\s*\((?P<params>.*)\)\s*;\Z", re.S)
opaque_decl = re.compile(r"typedef struct (?P<name>msb_\w+) (?P=name);\Z")

functions = {}
pointer_returning = []
last_doc, last_end = None, -1
for m in token.finditer(text):
    if m.group("doc") is not None:
        last_doc, last_end = m.group("doc"), m.end()
        continue
    decl = " ".join(m.group("decl").split())
    # The comment counts only if nothing but whitespace separates it from
    # the declaration.
    doc = last_doc if last_doc is not None and text[last_end:m.start()].strip() == "" else None
    doc_text = " ".join(re.sub(r"^\s*\*", "", doc or "", flags=re.M).split())
    opaque = opaque_decl.match(decl)
    if opaque:
        if "Thread safety" not in doc_text:
            problems.append(f"type {opaque.group('name')}: doc comment lacks a 'Thread safety:' note")
        continue
    fn = function_decl.match(decl)
    if not fn or decl.startswith("typedef"):
        continue
    name, ret, params = fn.group("name"), fn.group("ret").strip(), fn.group("params")
    functions[name] = doc_text
    if not doc_text:
        problems.append(f"{name}: no /** */ doc comment directly above the declaration")
        continue
    # err_out (struct msb_error **) follows the convention stated once at the
    # top of the header; every other owned output must be spoken for.
    for owned_type in re.findall(r"struct (msb_\w+) \*\*(?!err_out)\w+_out", params):
        if f"{owned_type}_free" not in doc_text and "ownership" not in doc_text.lower():
            problems.append(f"{name}: hands out an owned {owned_type} but its doc names neither "
                            f"{owned_type}_free nor the ownership rule")
    if ret.endswith("*"):
        pointer_returning.append(name)
    if name.endswith("_free") and "NULL" not in doc_text:
        problems.append(f"{name}: a _free function whose doc does not say what NULL does")

# A pointer's lifetime may be stated directly, or by deferring to a sibling
# whose doc states it ("Captured stderr; as `msb_run_output_stdout`").
lifetime_words = ("borrowed", "valid until", "static", "never free")
def states_lifetime(name, seen=()):
    doc = functions.get(name, "")
    if any(w in doc.lower() for w in lifetime_words):
        return True
    return any(states_lifetime(other, seen + (name,))
               for other in re.findall(r"\bas `(msb_\w+)`", doc) if other not in seen)
for name in pointer_returning:
    if functions[name] and not states_lifetime(name):
        problems.append(f"{name}: returns a pointer but its doc does not say how long it lives "
                        f"(expected one of: {', '.join(lifetime_words)}, or 'as `msb_other`')")

exported = [l.strip() for l in open(symbols_path) if l.strip() and not l.startswith("#")]
for sym in exported:
    if sym not in functions:
        problems.append(f"{sym}: exported (symbols/exported-symbols.txt) but not declared in the header")

if not functions:
    problems.append("no msb_ function declarations found: is the header path right?")
for p in problems:
    print(f"error: {p}", file=sys.stderr)
if problems:
    print(f"docs: {len(problems)} problem(s) in {header_path}", file=sys.stderr)
    sys.exit(1)
print(f"docs: all {len(functions)} functions documented with ownership and lifetime notes")
PY
