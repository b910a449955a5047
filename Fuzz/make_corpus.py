#!/usr/bin/env python3
"""Writes the seed corpora in Fuzz/Corpus/<target>/ (small, meaningful inputs).

Run from anywhere: `python3 Fuzz/make_corpus.py`. It only (re)writes the files it knows
(named by what they hold), so `regression-*` files and others added by hand stay.
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Corpus")


def write(target, name, data):
    directory = os.path.join(ROOT, target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


# --- FuzzWebSocketFrame -------------------------------------------------------------------
# Byte 0: bit 7 = program mode, bits 0-6 index into `limits` of FuzzWebSocketFrame.swift:
LIMITS = [0, 1, 2, 3, 16, 125, 126, 127, 200, 1000, 4096, 65535, 65536, 1 << 20]
L4096 = LIMITS.index(4096)
L16 = LIMITS.index(16)


def frame(opcode, payload=b"", fin=True, mask=b"\x12\x34\x56\x78", rsv=0, length_form=None):
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask is not None else 0
    n = len(payload)
    form = length_form or (7 if n < 126 else 16 if n <= 0xFFFF else 64)
    if form == 7:
        header = bytes([first, mask_bit | n])
    elif form == 16:
        header = bytes([first, mask_bit | 126]) + struct.pack(">H", n)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return header + payload
    return header + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def ws(name, stream, limit=L4096, seed=0x2A):
    write("FuzzWebSocketFrame", name, bytes([limit, seed]) + stream)


join = b'{"type":"join","room":"lobby","id":1}'
ws("text-masked", frame(0x1, join))
ws("text-zero-mask", frame(0x1, b"hello", mask=b"\0\0\0\0"))
ws("text-unmasked", frame(0x1, b"hello", mask=None))
ws("text-utf8", frame(0x1, "h\u00e9llo \u20ac \U0001D11E".encode()))
ws("text-invalid-utf8", frame(0x1, b"\xc3\x28 \xed\xa0\x80"))
ws("text-empty", frame(0x1, b""))
ws("binary", frame(0x2, bytes(range(0, 40))))
ws("fragmented-with-ping", frame(0x1, b'{"type":', fin=False) + frame(0x9, b"p") + frame(0x0, b'"leave",', fin=False)
   + frame(0xA, b"") + frame(0x0, b'"room":"r"}'))
ws("fragmented-binary", frame(0x2, b"\x00\x01", fin=False) + frame(0x0, b"\x02", fin=False) + frame(0x0, b""))
ws("fragment-split-utf8", frame(0x1, "\u20ac".encode()[:1], fin=False) + frame(0x0, "\u20ac".encode()[1:]))
ws("continuation-without-start", frame(0x0, b"x"))
ws("new-message-inside-fragments", frame(0x1, b"a", fin=False) + frame(0x1, b"b"))
ws("ping", frame(0x9, b"are you there"))
ws("ping-125", frame(0x9, b"p" * 125))
ws("ping-126", frame(0x9, b"p" * 126, length_form=16))
ws("ping-not-final", frame(0x9, b"p", fin=False))
ws("pong", frame(0xA, b"unsolicited"))
ws("close-1000-reason", frame(0x8, struct.pack(">H", 1000) + b"bye"))
ws("close-empty", frame(0x8, b""))
ws("close-one-byte", frame(0x8, b"\x03"))
ws("close-4000", frame(0x8, struct.pack(">H", 4000)))
ws("close-1005-reserved", frame(0x8, struct.pack(">H", 1005)))
ws("close-2999", frame(0x8, struct.pack(">H", 2999)))
ws("close-bad-utf8-reason", frame(0x8, struct.pack(">H", 1001) + b"\xff"))
ws("length-16bit", frame(0x2, b"\xab" * 300))
ws("length-64bit-small", frame(0x1, b"x" * 10, length_form=64))
ws("length-64bit-huge", bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 63) + b"\x01\x02\x03\x04")
ws("length-64bit-int32max", bytes([0x82, 0xFF]) + struct.pack(">Q", 0x7FFFFFFF) + b"\x01\x02\x03\x04")
ws("over-limit-16", frame(0x1, b"a" * 17), limit=L16)
ws("fragments-over-limit-16", frame(0x1, b"a" * 10, fin=False) + frame(0x0, b"b" * 10), limit=L16)
ws("reserved-bits", frame(0x1, b"x", rsv=0x40))
ws("unknown-opcode-3", frame(0x3, b"x"))
ws("unknown-opcode-b", frame(0xB, b""))
ws("pipelined", frame(0x1, b"one") + frame(0x2, b"two") + frame(0x9, b"") + frame(0x1, b"three") + frame(0x8, b"\x03\xe8"))
ws("incomplete-header", bytes([0x81]))
ws("incomplete-payload", frame(0x1, b"truncated")[:-3])
# Program mode (byte 0 bit 7): pairs of (op, length); see `fuzzProgram`.
ws("program-mixed", bytes([0, 5, 1, 3, 2, 4, 3, 0, 4, 1, 5 | 0x20, 30, 6 | 0x18, 9]), limit=0x80 | L4096)
ws("program-long", bytes([0 | 0x80 | 0x40, 250, 1 | 0x80, 20, 4, 2]), limit=0x80 | LIMITS.index(1 << 20))
ws("program-over-limit", bytes([0, 10, 5, 40, 1, 3]), limit=0x80 | L16)

# --- FuzzJSON -----------------------------------------------------------------------------
json_seeds = {
    "object": '{"a":1,"b":[true,false,null],"c":{"d":"e"}}',
    "object-spaces": ' \t\r\n{ "a" : [ 1 , 2 ] , "b" : { } } \n',
    "empty-object": "{}",
    "empty-array": "[]",
    "string": '"plain"',
    "escapes": '"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\u20AC"',
    "surrogate-pair": '"\\ud83d\\ude00"',
    "lone-surrogate-value": '{"a":"\\udc00"}',
    "lone-surrogate-key": '{"\\ud800":1}',
    "utf8": '{"k":"h\u00e9llo \u20ac \U0001F600"}',
    "invalid-utf8": b'{"k":"\xc3\x28"}',
    "overlong-utf8": b'"\xc0\xaf"',
    "surrogate-utf8": b'"\xed\xa0\x80"',
    "control-char": '"a\tb"',
    "numbers": "[0,-0,1.5,-2.5e10,3E+2,4e-2,123456789012345678901234567890]",
    "number-huge-exponent": "[1e400,-1e-400]",
    "bad-numbers": "[01]",
    "number-dot": "[1.]",
    "literals": "[true,false,null]",
    "bad-literal": "[tru]",
    "duplicate-keys": '{"a":1,"a":2}',
    "nested-64": "[" * 63 + "]" * 63,
    "nested-65": "[" * 65 + "]" * 65,
    "nested-objects": '{"a":' * 20 + "1" + "}" * 20,
    "trailing-comma": '{"a":1,}',
    "trailing-garbage": '{"a":1} x',
    "unterminated": '{"a":"b',
    "nul-escape-key": '{"\\u0000":0}',
    "bom": b"\xef\xbb\xbf{}",
    "number-top": "-12.5e3",
}
for name, text in json_seeds.items():
    write("FuzzJSON", name, text)

# --- FuzzClientFrame ----------------------------------------------------------------------
frames = {
    "join": '{"type":"join","room":"lobby","id":1}',
    "join-since": '{"type":"join","room":"lobby","since":{"offset":17,"epoch":"6742a1b3f4240"},"id":4}',
    "join-since-bad": '{"type":"join","room":"lobby","since":{"offset":-1}}',
    "leave": '{"type":"leave","room":"lobby","id":"x"}',
    "publish": '{"type":"publish","room":"lobby","data":{"text":"hi"},"id":"p-2"}',
    "send": '{"type":"send","user":"bob","data":[1,"two",{"3":null}],"id":{"nested":true}}',
    "broadcast": '{"type":"broadcast","data":"maintenance at 18:00"}',
    "presence": '{"type":"presence","room":"lobby"}',
    "ack": '{"type":"ack","offset":12,"epoch":"6742a1c0a11f8","id":5}',
    "ack-no-epoch": '{"type":"ack","offset":0}',
    "ack-negative": '{"type":"ack","offset":-3}',
    "ack-float": '{"type":"ack","offset":1.5}',
    "ping": '{"type":"ping","id":9}',
    "unknown-type": '{"type":"dance"}',
    "missing-type": '{"room":"lobby"}',
    "type-not-string": '{"type":1}',
    "not-object": '["join"]',
    "malformed": '{"type":"join",',
    "duplicate-keys": '{"type":"leave","type":"join","room":"a","room":"b"}',
    "room-escaped": '{"type":"join","room":"\\u006c\\u006fbby"}',
    "room-space-inside": '{"type":"join","room":"a b"}',
    "room-leading-space": '{"type":"join","room":" a"}',
    "room-empty": '{"type":"join","room":""}',
    "room-control": '{"type":"join","room":"a\\u0000b"}',
    "room-emoji-zwj": '{"type":"join","room":"\U0001F469\u200d\U0001F4BB"}',
    "room-zwnj-persian": '{"type":"join","room":"\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"}',
    "room-flag-tags": '{"type":"join","room":"\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F"}',
    "room-kelvin": '{"type":"join","room":"\u212aate"}',
    "room-nfd": '{"type":"join","room":"e\u0301"}',
    "room-nfc": '{"type":"join","room":"\u00e9"}',
    "room-bidi": '{"type":"join","room":"\u202ealice"}',
    "room-nbsp": '{"type":"join","room":"a\u00a0b"}',
    "room-fffd": '{"type":"join","room":"\ufffd"}',
    "room-private-use": '{"type":"join","room":"\ue000"}',
    "room-200-bytes": '{"type":"join","room":"' + "r" * 200 + '"}',
    "room-201-bytes": '{"type":"join","room":"' + "r" * 201 + '"}',
    "room-lone-surrogate": '{"type":"join","room":"\\ud800"}',
    "user-variation-selector": '{"type":"send","user":"\u2764\ufe0f","data":1}',
    "publish-no-data": '{"type":"publish","room":"lobby"}',
}
for name, text in frames.items():
    write("FuzzClientFrame", name, text)
# Bare names (the target also checks the input as a name).
for name, text in {
    "name-ascii": "alice",
    "name-emoji": "\U0001F469\u200d\U0001F4BB",
    "name-nfd": "Cafe\u0301",
    "name-hangul": "\u1100\u1161",
    "name-zwj-alone": "a\u200db",
    "name-tag-alone": "a\U000E0067",
}.items():
    write("FuzzClientFrame", name, text)

# --- FuzzRESP -----------------------------------------------------------------------------
resp = {
    "simple-string": "+OK\r\n",
    "simple-error": "-ERR unknown command 'FOO'\r\n",
    "integer": ":-42\r\n",
    "integer-overflow": ":9223372036854775808\r\n",
    "bulk": "$5\r\nhe\r\no\r\n",
    "bulk-empty": "$0\r\n\r\n",
    "bulk-null": "$-1\r\n",
    "bulk-bad-length": "$-2\r\n",
    "bulk-no-crlf": "$3\r\nabcde",
    "array": "*2\r\n$3\r\nfoo\r\n:1\r\n",
    "array-null": "*-1\r\n",
    "array-empty": "*0\r\n",
    "array-nested": "*2\r\n*2\r\n:1\r\n*1\r\n+x\r\n%1\r\n+k\r\n~1\r\n_\r\n",
    "null": "_\r\n",
    "double": ",3.25\r\n",
    "double-exp": ",1.5e-10\r\n",
    "double-inf": ",-inf\r\n",
    "double-nan": ",nan\r\n",
    "double-bad": ",abc\r\n",
    "boolean": "#t\r\n",
    "boolean-bad": "#x\r\n",
    "bulk-error": "!8\r\nSYNTAX x\r\n",
    "verbatim": "=9\r\ntxt:hello\r\n",
    "verbatim-short": "=2\r\ntx\r\n",
    "big-number": "(3492890328409238509324850943850943825024385\r\n",
    "big-number-negative": "(-3492890328409238509324850943850943825024385\r\n",
    "map": "%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n#t\r\n",
    "hello-reply": "%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n",
    "set": "~2\r\n+x\r\n+y\r\n",
    "push-message": ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
    "push-subscribe": ">3\r\n$9\r\nsubscribe\r\n$5\r\nherald\r\n:1\r\n",
    "attribute": "|1\r\n+ttl\r\n:3\r\n+OK\r\n",
    "attribute-nested": "|1\r\n+a\r\n|1\r\n+b\r\n:2\r\n*1\r\n:3\r\n",
    "pipelined": "+OK\r\n:1\r\n$1\r\nx\r\n_\r\n",
    "xread-reply": "*1\r\n*2\r\n$5\r\nroom1\r\n*1\r\n*2\r\n$15\r\n1700000000000-0\r\n*2\r\n$4\r\ndata\r\n$7\r\n{\"a\":1}\r\n",
    "deep": "*1\r\n" * 40 + ":1\r\n",
    "cr-without-lf": "+OK\rX",
    "unknown-type": "?x\r\n",
    "incomplete": "*3\r\n:1\r\n",
}
for name, text in resp.items():
    write("FuzzRESP", name, text)

# --- FuzzPublishRequest -------------------------------------------------------------------
publish = {
    "room": '/api/rooms/lobby/publish\n{"data":{"x":1}}',
    "room-with-id": '/api/rooms/lobby/publish\n{"data":{"x":1},"id":"k-1"}',
    "room-ack-refused": '/api/rooms/lobby/publish\n{"data":1,"ack":true}',
    "user-ack": '/api/users/a%20b/send\n{"data":{"x":1},"ack":true,"id":"k"}',
    "user-ack-false": '/api/users/bob/send\n{"data":"hi","ack":false}',
    "user-ack-string": '/api/users/bob/send\n{"data":"hi","ack":"true"}',
    "broadcast": '/api/broadcast\n{"data":[1,2,3]}',
    "broadcast-query": '/api/broadcast?key=1\n{"data":null}',
    "idempotency-key-field": '/api/rooms/lobby/publish\n{"data":{"x":1},"ack":true,"idempotency_key":"k"}',
    "id-empty": '/api/rooms/r/publish\n{"data":0,"id":""}',
    "id-number": '/api/rooms/r/publish\n{"data":0,"id":7}',
    "id-201-bytes": '/api/rooms/r/publish\n{"data":0,"id":"' + "k" * 201 + '"}',
    "missing-data": '/api/rooms/r/publish\n{"id":"x"}',
    "not-object": '/api/rooms/r/publish\n[1]',
    "empty-body": '/api/rooms/r/publish\n',
    "percent-utf8": '/api/rooms/caf%C3%A9/publish\n{"data":1}',
    "percent-slash": '/api/rooms/a%2Fb/publish\n{"data":1}',
    "percent-invalid": '/api/rooms/%FF/publish\n{"data":1}',
    "percent-lone": '/api/rooms/100%/publish\n{"data":1}',
    "percent-zz": '/api/users/%zz/send\n{"data":1}',
    "percent-nul": '/api/users/a%00b/send\n{"data":1}',
    "percent-nfd": '/api/users/e%CC%81/send\n{"data":1}',
    "empty-name": '/api/rooms//publish\n{"data":1}',
    "trailing-slash": '/api/rooms/lobby/publish/\n{"data":1}',
    "other-route": '/api/rooms/lobby\n{"data":1}',
    "not-api": '/rooms/lobby/publish\n{"data":1}',
    "dot-name": '/api/rooms/../publish\n{"data":1}',
}
for name, text in publish.items():
    write("FuzzPublishRequest", name, text)
