#!/usr/bin/env python3
"""Writes tests/pii/generated.txt: labelled examples for the PII corpus test.

Positives are built from each format's own rules (Luhn and network prefixes for
cards, ISO 7064 check digits for IBANs, E.164 and national formats for phones, the
SSA rules for SSNs, each provider's token format), in varied surroundings;
negatives are the look-alikes that trap naive patterns (timestamps, ids, hashes,
UUIDs, versions, prices, dates, invalid check digits). Deterministic: the same seed
gives the same file. Same format as positives.txt: entities marked
[[kind:value]], `\\n` for a newline.

    python3 tests/pii/generate.py            # rewrites generated.txt
"""

import base64
import ipaddress
import json
import os
import random
import string
import zlib

R = random.Random(2026)
B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
ALNUM = string.ascii_letters + string.digits


def digits(n):
    return "".join(R.choice(string.digits) for _ in range(n))


def alnum(n, alphabet=ALNUM):
    return "".join(R.choice(alphabet) for _ in range(n))


def mark(kind, value):
    return f"[[{kind}:{value}]]"


# --- contexts ------------------------------------------------------------------------

NAMES = ["Jane Doe", "Wei Chen", "Olga Ivanova", "Ahmed Khan", "Lucas Silva", "Priya Nair",
         "Maria Garcia", "John Smith", "Aiko Tanaka", "Fatima Zahra"]

CONTEXTS = [
    "Please contact {} regarding ticket #{n}.",
    "| {name} | {} | active |",
    '{{"field": "{}", "id": {n}}}',
    "log: user={} action=login ts={ts}",
    "Customer {name} ({}) asked for a refund of ${n}.{c}.",
    "{}",
    "Forwarded message from {name}: {}\n> see below",
    "{name},{},{n}",
    "Note to self - {} - follow up on {date}.",
    "The value was {} according to the {date} export.",
    "<td>{}</td>",
    "`{}`",
    "- {name}: {}",
]


def place(entity):
    ctx = R.choice(CONTEXTS)
    return ctx.format(entity, n=R.randint(10, 99999), c=digits(2), name=R.choice(NAMES),
                      ts=R.randint(1_600_000_000, 1_800_000_000),
                      date=f"2026-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}")


# --- positives -----------------------------------------------------------------------

FIRST = ["jane", "wei", "olga", "ahmed", "lucas", "priya", "maria", "john", "aiko", "fatima"]
LAST = ["doe", "chen", "ivanova", "khan", "silva", "nair", "garcia", "smith", "tanaka"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "example.co.uk",
           "example.com.au", "sub.example.io", "example.dev", "example-shop.de",
           "example.photography", "xn--bcher-kva.example"]


def email():
    f, l = R.choice(FIRST), R.choice(LAST)
    local = R.choice([f"{f}.{l}", f"{f}_{l}", f"{f}{R.randint(1, 999)}", f"{f[0]}{l}",
                      f"{f}.{l}+{R.choice(['news', 'billing', 'x'])}", f"{f}-{l}",
                      f"{f.upper()}.{l.capitalize()}"])
    return local + "@" + R.choice(DOMAINS)


def nanp_parts():
    return (str(R.randint(2, 9)) + digits(2), str(R.randint(2, 9)) + digits(2), digits(4))


def phone():
    a, e, l = nanp_parts()
    forms = [
        f"+1 ({a}) {e}-{l}", f"+1 {a} {e} {l}", f"+1-{a}-{e}-{l}", f"+1{a}{e}{l}",
        f"({a}) {e}-{l}", f"{a}-{e}-{l}", f"1-{a}-{e}-{l}", f"({a}) {e}.{l}",
        f"+44 20 {digits(4)} {digits(4)}", f"+44 7{digits(3)} {digits(6)}",
        f"020 {digits(4)} {digits(4)}", f"07{digits(3)} {digits(6)}",
        f"+33 {R.randint(1, 9)} {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
        f"0{R.randint(1, 9)} {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
        f"+49 30 {digits(8)}", f"+49 1{digits(2)} {digits(7)}",
        f"+34 {R.randint(6, 9)}{digits(2)} {digits(3)} {digits(3)}",
        f"+39 0{R.randint(2, 9)} {digits(4)} {digits(4)}",
        f"+61 4{digits(2)} {digits(3)} {digits(3)}",
        f"+81 90-{digits(4)}-{digits(4)}",
        f"+91 {R.randint(6, 9)}{digits(4)} {digits(5)}",
        f"+52 55 {digits(4)} {digits(4)}",
        f"+27 {R.randint(1, 8)}{digits(1)} {digits(3)} {digits(4)}",
        f"+353 {R.randint(1, 9)}{digits(1)} {digits(3)} {digits(4)}",
    ]
    return R.choice(forms)


def ssn_value():
    while True:
        area = R.randint(1, 899)
        if area != 666:
            break
    return f"{area:03d}", f"{R.randint(1, 99):02d}", f"{R.randint(1, 9999):04d}"


def ssn():
    a, g, s = ssn_value()
    form = R.randint(0, 3)
    if form == 0:
        return f"{a} {g} {s}", None
    if form == 1:
        return f"{a}{g}{s}", R.choice(["SSN: ", "SSN ", "ssn=", "Social Security Number ", "SS# "])
    return f"{a}-{g}-{s}", None


def luhn_complete(prefix, length):
    d = [int(x) for x in prefix] + [R.randint(0, 9) for _ in range(length - len(prefix) - 1)]
    total = 0
    for i, x in enumerate(reversed(d)):
        if i % 2 == 0:
            x *= 2
            if x > 9:
                x -= 9
        total += x
    return "".join(map(str, d)) + str((10 - total % 10) % 10)


NETWORKS = [  # (prefix choices, lengths, groupings)
    (["4"], [16], "4444"), (["4"], [13, 19], "bare"),
    ([str(p) for p in range(51, 56)], [16], "4444"),
    ([str(p) for p in range(2221, 2721, 37)], [16], "4444"),
    (["34", "37"], [15], "465"), (["6011", "65", "644", "649"], [16], "4444"),
    (["3528", "3540", "3589"], [16], "4444"), (["36", "300", "305", "38"], [14], "464"),
    (["62"], [16, 19], "4444"), (["2200", "2204"], [16], "4444"),
]


def card():
    prefixes, lengths, grouping = R.choice(NETWORKS)
    n = luhn_complete(R.choice(prefixes), R.choice(lengths))
    sep = R.choice([" ", "-", ""])
    if grouping == "bare" or sep == "":
        return n
    if grouping == "465":
        return sep.join([n[:4], n[4:10], n[10:]])
    if grouping == "464":
        return sep.join([n[:4], n[4:10], n[10:]])
    return sep.join(n[i:i + 4] for i in range(0, len(n), 4))


IBAN_FORMATS = {  # country: BBAN length and pattern (n digits, a letters, c alnum)
    "DE": "18n", "GB": "4a14n", "FR": "10n11c2n", "ES": "20n", "IT": "1a10n12c", "NL": "4a10n",
    "BE": "12n", "CH": "5n12c", "AT": "16n", "PL": "24n", "SE": "20n", "NO": "11n",
    "DK": "14n", "FI": "14n", "PT": "21n", "IE": "4a14n", "LU": "3n13c", "CZ": "20n",
    "HU": "24n", "RO": "4a16c", "GR": "7n16c", "HR": "17n", "SK": "20n", "SI": "15n",
}


def bban(fmt):
    out, num = [], ""
    for ch in fmt:
        if ch.isdigit():
            num += ch
            continue
        n, num = int(num), ""
        pool = {"n": string.digits, "a": string.ascii_uppercase,
                "c": string.digits + string.ascii_uppercase}[ch]
        out.append("".join(R.choice(pool) for _ in range(n)))
    return "".join(out)


def iban_check(country, b):
    s = b + country + "00"
    num = int("".join(str(int(c, 36)) for c in s))
    return f"{98 - num % 97:02d}"


def iban(valid=True):
    country = R.choice(list(IBAN_FORMATS))
    b = bban(IBAN_FORMATS[country])
    check = iban_check(country, b)
    if not valid:
        check = f"{(int(check) + R.randint(1, 40)) % 97 + 2:02d}"
        if check == iban_check(country, b):
            check = f"{(int(check) + 1) % 97 + 2:02d}"
    value = country + check + b
    if R.random() < 0.5:
        value = " ".join(value[i:i + 4] for i in range(0, len(value), 4))
    return value


def ipv4():
    kind = R.randint(0, 3)
    if kind == 0:
        a = f"10.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"
    elif kind == 1:
        a = f"192.168.{R.randint(0, 255)}.{R.randint(1, 254)}"
    else:
        a = ".".join(str(R.randint(11, 223) if i == 0 else R.randint(0, 255)) for i in range(4))
    return a


def ipv4_in_context():
    a = ipv4()
    forms = [f"from {mark('ipv4', a)}", f"ip={mark('ipv4', a)}", f"{mark('ipv4', a)}:{R.randint(1, 65535)}",
             f"http://{mark('ipv4', a)}/status", f"client {mark('ipv4', a)} connected",
             f"[{mark('ipv4', a)}]", f"X-Real-IP: {mark('ipv4', a)}"]
    return R.choice(forms)


def ipv6():
    addr = ipaddress.IPv6Address(R.getrandbits(128) & ~(0xFFFF << 80) if R.random() < 0.3
                                 else (0x2001_0db8 << 96) | R.getrandbits(64))
    return addr.compressed if R.random() < 0.7 else addr.exploded


def ipv6_in_context():
    a = ipv6()
    return R.choice([f"from {mark('ipv6', a)}", f"http://[{mark('ipv6', a)}]:8443/",
                     f"addr={mark('ipv6', a)} ok", f"peer {mark('ipv6', a)} up"])


def b62(v):
    s = ""
    for _ in range(6):
        s = B62[v % 62] + s
        v //= 62
    return s


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def secret():
    k = R.randint(0, 11)
    if k == 0:
        return "openai_key", "sk-proj-" + alnum(R.randint(60, 120), ALNUM + "-_").strip("-_") + alnum(4)
    if k == 1:
        return "openai_key", "sk-" + alnum(48)
    if k == 2:
        return "anthropic_key", "sk-ant-api03-" + alnum(93, ALNUM + "-_") + "AA"
    if k == 3:
        return "aws_access_key", R.choice(["AKIA", "ASIA"]) + alnum(16, string.ascii_uppercase + "234567")
    if k == 4:
        r = alnum(30)
        return "github_token", R.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + r + b62(zlib.crc32(r.encode()))
    if k == 5:
        return "github_token", "github_pat_" + alnum(22) + "_" + alnum(59)
    if k == 6:
        return "gitlab_token", "glpat-" + alnum(20, ALNUM + "-_")
    if k == 7:
        return "slack_token", f"xox{R.choice('baprs')}-{digits(12)}-{digits(13)}-{alnum(24)}"
    if k == 8:
        return "stripe_key", R.choice(["sk_live_", "rk_live_", "sk_test_"]) + alnum(R.choice([24, 99]))
    if k in (9, 10):
        header = {"alg": R.choice(["HS256", "RS256", "ES256", "EdDSA"]), "typ": "JWT"}
        if R.random() < 0.5:
            header["kid"] = alnum(8)
        payload = {"sub": digits(9), "iat": R.randint(1_600_000_000, 1_800_000_000),
                   "scope": "read write"}
        return "jwt", ".".join([b64u(json.dumps(header).encode()), b64u(json.dumps(payload).encode()),
                                b64u(R.randbytes(R.choice([32, 64, 256])))])
    label = R.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = "\\n".join(base64.b64encode(R.randbytes(48)).decode() for _ in range(R.randint(2, 6)))
    return "private_key", f"-----BEGIN {label}-----\\n{body}\\n-----END {label}-----"


def secret_in_context():
    kind, value = secret()
    m = mark(kind, value)
    return R.choice([f"export TOKEN={m}", f'api_key = "{m}"', f"Authorization: Bearer {m}",
                     f"{m}", f"# leaked in CI: {m}\\nrun 42 failed", f"'{m}'"])


# --- negatives -----------------------------------------------------------------------

def uuid():
    return "-".join(alnum(n, "0123456789abcdef") for n in (8, 4, 4, 4, 12))


def luhn_invalid(n):
    return luhn_complete(n[:-1], len(n))[:-1] + str((int(luhn_complete(n[:-1], len(n))[-1]) + R.randint(1, 9)) % 10)


def negative():
    k = R.randint(0, 21)
    ts = R.randint(1_500_000_000, 1_900_000_000)
    if k == 0:
        return R.choice([f"created_at={ts}", f'"ts": {ts}{digits(3)}', f"expires {ts}", f"epoch {ts}.{digits(3)}"])
    if k == 1:
        return f"order {R.choice(['#', 'no. ', 'id ', ''])}{digits(R.randint(6, 12))} shipped"
    if k == 2:
        return f"commit {alnum(40, '0123456789abcdef')} by {R.choice(FIRST)}"
    if k == 3:
        return f"request_id={uuid()} status=200"
    if k == 4:
        v = ".".join(str(R.randint(0, 20)) for _ in range(R.choice([3, 4])))
        return f"{R.choice(['version ', 'v', 'release ', 'build ', 'Version: '])}{v}"
    if k == 5:
        return f"Total ${R.randint(1, 99999):,}.{digits(2)} (tax {R.randint(1, 999)}.{digits(2)})"
    if k == 6:
        y, m, d = R.randint(2000, 2030), R.randint(1, 12), R.randint(1, 28)
        return R.choice([f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{m:02d}.{d:02d}.{y}",
                         f"{y}-{m:02d}-{d:02d}T{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:00Z"])
    if k == 7:
        prefix = R.choice(["4", "51", "37", "6011"])
        n = luhn_invalid(luhn_complete(prefix, 15 if prefix == "37" else 16))
        return f"card {' '.join(n[i:i + 4] for i in range(0, len(n), 4))} declined"
    if k == 8:
        bad = R.choice([f"000-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}",
                        f"666-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}",
                        f"9{digits(2)}-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}",
                        f"{R.randint(1, 665):03d}-00-{R.randint(1, 9999):04d}",
                        f"{R.randint(1, 665):03d}-{R.randint(1, 99):02d}-0000"])
        return f"id {bad}"
    if k == 9:
        return f"IBAN {iban(valid=False)} rejected"
    if k == 10:
        return f"ip {R.randint(256, 999)}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(0, 255)}"
    if k == 11:
        return f"call 1{digits(2)}-{digits(3)}-{digits(4)}"  # NANP area codes start 2-9
    if k == 12:
        return f"count {digits(10)} rows"
    if k == 13:
        return R.choice(["OPENAI_API_KEY=sk-...", "sk-your-key-here", "AKIAIOSFODNN7EXAMPLE",
                         "ghp_" + "x" * 36, "xoxb-your-token", "pk_live_" + alnum(24),
                         "sk-" + "x" * 40, "glpat-" + "x" * 4])
    if k == 14:
        return f"{R.choice(['S3', 'EKS', 'EC2', 'RDS', 'SQS'])} {R.choice(['bucket', 'cluster', 'instance'])} in us-east-{R.randint(1, 2)} ({R.choice(['t3', 'm5', 'c6g'])}.{R.choice(['micro', 'large', '2xlarge'])})"
    if k == 15:
        return f"at {R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d} took {R.randint(1, 999)}ms"
    if k == 16:
        return f"mac {':'.join(alnum(2, '0123456789ABCDEF') for _ in range(6))}"
    if k == 17:
        return f"sha256:{alnum(64, '0123456789abcdef')}"
    if k == 18:
        return f"| {R.randint(2019, 2026)} | {digits(R.randint(3, 7))} | {digits(2)} | {R.randint(1, 99)}.{digits(2)} |"
    if k == 19:
        return f"{R.choice(['icon', 'logo', 'hero'])}@{R.randint(2, 3)}x.png"
    if k == 20:
        return f"npm i {R.choice(['react', 'lodash', 'vite'])}@{R.randint(1, 20)}.{R.randint(0, 9)}.{R.randint(0, 30)}"
    return f"OID {'.'.join(str(R.randint(0, 40)) for _ in range(R.randint(5, 9)))}"


def main():
    lines = ["# Generated by tests/pii/generate.py (seed 2026); do not edit by hand."]
    makers = [
        ("email", lambda: place(mark("email", email()))),
        ("phone", lambda: place(mark("phone", phone()))),
        ("ssn", lambda: (lambda v: place((v[1] or R.choice(["SSN ", "", "employee ", "social security no. "]))
                                         + mark("ssn", v[0])))(ssn())),
        ("card", lambda: place(mark("card", card()))),
        ("iban", lambda: place(mark("iban", iban()))),
        ("ipv4", ipv4_in_context),
        ("ipv6", ipv6_in_context),
        ("secret", secret_in_context),
    ]
    for _, make in makers:
        for _ in range(45):
            lines.append(make())
    for _ in range(200):
        lines.append(negative())
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated.txt")
    with open(out, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line.replace("\n", "\\n") + "\n")
    print(f"wrote {len(lines) - 1} examples to {out}")


if __name__ == "__main__":
    main()
