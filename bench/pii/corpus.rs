//! A deterministic "mixed text" corpus: what agents actually send and print.
//!
//! By default mostly prose (about half the bytes) and code or JSON (a third),
//! then logs and Markdown tables (`--mix` changes the weights), full of the numbers that
//! trap naive detectors (timestamps, ids, SHAs, UUIDs, versions, prices, dates,
//! times), with sparse personal data and secrets (about one entity per 2 KiB).
//! The same seed always gives the same bytes, so `presidio.sh` scans exactly the
//! text the Rust benchmark scans.

/// splitmix64: tiny, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    fn hex(&mut self, n: usize) -> String {
        const H: &[u8] = b"0123456789abcdef";
        (0..n)
            .map(|_| char::from(H[self.below(16) as usize]))
            .collect()
    }

    fn alnum(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..n)
            .map(|_| char::from(A[self.below(62) as usize]))
            .collect()
    }
}

const WORDS: &[&str] = &[
    "the",
    "agent",
    "model",
    "request",
    "response",
    "customer",
    "order",
    "account",
    "please",
    "update",
    "status",
    "we",
    "will",
    "can",
    "should",
    "report",
    "summary",
    "data",
    "service",
    "team",
    "issue",
    "ticket",
    "support",
    "billing",
    "invoice",
    "payment",
    "shipping",
    "review",
    "error",
    "retry",
    "timeout",
    "deploy",
    "cluster",
    "region",
    "S3",
    "EKS",
    "bucket",
    "queue",
    "latency",
    "budget",
    "token",
    "prompt",
    "output",
    "tool",
    "call",
    "function",
    "result",
    "value",
    "field",
    "record",
    "user",
    "profile",
    "settings",
    "email",
    "address",
    "number",
    "and",
    "or",
    "for",
    "with",
    "from",
    "into",
    "about",
    "after",
    "before",
    "during",
    "while",
    "a",
    "an",
    "is",
    "are",
    "was",
    "were",
    "has",
    "have",
    "this",
    "that",
    "these",
    "those",
    "quickly",
    "carefully",
    "again",
    "today",
    "tomorrow",
    "yesterday",
    "every",
    "each",
    "new",
    "old",
    "large",
    "small",
    "first",
    "last",
    "next",
    "previous",
    "final",
    "draft",
    "meeting",
    "notes",
    "plan",
    "schedule",
    "project",
    "milestone",
    "feature",
    "release",
    "version",
    "build",
    "test",
    "suite",
    "coverage",
    "metric",
    "dashboard",
    "alert",
    "on-call",
];

fn sentence(r: &mut Rng, out: &mut String) {
    let n = 6 + r.below(14) as usize;
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        match r.below(80) {
            0 => out.push_str(&format!("{}", r.below(100))),
            1 => out.push_str(&format!("${}.{:02}", r.below(2000), r.below(100))),
            2 => out.push_str(&format!("{}", 2019 + r.below(8))),
            3 => out.push_str(&format!("{}.{}.{}", r.below(5), r.below(20), r.below(30))),
            4 => out.push_str(&format!("{}:{:02}", 1 + r.below(12), r.below(60))),
            5 => out.push_str(&format!("#{}", 1000 + r.below(90000))),
            _ => {
                let w = *r.pick(WORDS);
                if i == 0 {
                    let mut c = w.chars();
                    if let Some(f) = c.next() {
                        out.extend(f.to_uppercase());
                        out.push_str(c.as_str());
                    }
                } else {
                    out.push_str(w);
                }
            }
        }
    }
    const ENDS: &[&str] = &[".", ".", ".", "?", "!", ";"];
    let end = ENDS[r.below(ENDS.len() as u64) as usize];
    out.push_str(end);
}

fn prose(r: &mut Rng, out: &mut String) {
    let n = 3 + r.below(5);
    for _ in 0..n {
        sentence(r, out);
        out.push(' ');
    }
    out.push_str("\n\n");
}

fn uuid(r: &mut Rng) -> String {
    format!(
        "{}-{}-4{}-a{}-{}",
        r.hex(8),
        r.hex(4),
        r.hex(3),
        r.hex(3),
        r.hex(12)
    )
}

fn code(r: &mut Rng, out: &mut String) {
    match r.below(4) {
        0 => out.push_str(&format!(
            "def handle_{name}(event, ctx):\n    \"\"\"Process {name} events (retries={n}).\"\"\"\n    \
             if event.get(\"status\") != {code}:\n        return None\n    \
             ts = event[\"ts\"]  # e.g. {ts}\n    key = f\"{{ctx.region}}/{{event['id']}}\"\n    \
             for i in range({n}):\n        result = client.put(key, data[i:i + {m}], timeout={t}.5)\n    \
             return {{\"ok\": True, \"id\": \"{uuid}\", \"sha\": \"{sha}\"}}\n\n",
            name = r.pick(WORDS).replace('-', "_"),
            n = r.below(10),
            code = 200 + r.below(300),
            ts = 1_600_000_000 + r.below(200_000_000),
            m = r.below(4096),
            t = r.below(60),
            uuid = uuid(r),
            sha = r.hex(40),
        )),
        1 => out.push_str(&format!(
            "fn {name}_{n}(buf: &[u8], len: usize) -> Result<u{bits}, Error> {{\n    \
             let mut acc: u{bits} = 0x{hex};\n    for (i, b) in buf.iter().enumerate().take(len) {{\n        \
             acc = acc.wrapping_mul({mul}).wrapping_add(u{bits}::from(*b) << (i % {sh}));\n    }}\n    \
             if acc == {lit} {{ return Err(Error::Overflow {{ at: {at} }}); }}\n    Ok(acc)\n}}\n\n",
            name = r.pick(&["parse", "hash", "encode", "decode", "check"]),
            n = r.below(100),
            bits = r.pick(&["32", "64"]),
            hex = r.hex(8),
            mul = r.below(1_000_003),
            sh = 1 + r.below(31),
            lit = r.below(u64::from(u32::MAX)),
            at = r.below(10_000),
        )),
        2 => out.push_str(&format!(
            "{{\"id\": \"{uuid}\", \"created\": {ts}, \"amount\": {a}.{c:02}, \"currency\": \"USD\", \
             \"items\": [{i1}, {i2}, {i3}], \"commit\": \"{sha}\", \"version\": \"{v1}.{v2}.{v3}\", \
             \"region\": \"us-east-{reg}\", \"tags\": [\"S3\", \"EKS\"], \"ratio\": 0.{frac}}}\n",
            uuid = uuid(r),
            ts = 1_600_000_000_000u64 + r.below(200_000_000_000),
            a = r.below(10_000),
            c = r.below(100),
            i1 = r.below(100_000),
            i2 = r.below(100_000),
            i3 = r.below(100_000),
            sha = r.hex(40),
            v1 = r.below(5),
            v2 = r.below(30),
            v3 = r.below(100),
            reg = 1 + r.below(2),
            frac = r.digits(6),
        )),
        _ => out.push_str(&format!(
            "const cfg = {{ port: {port}, retries: {n}, backoffMs: [{b1}, {b2}, {b3}], build: \"{build}\" }};\n\
             export async function fetch{name}(id) {{\n  const res = await fetch(`/api/v{v}/orders/${{id}}?limit={l}`);\n  \
             if (!res.ok) throw new Error(`HTTP ${{res.status}} after ${{Date.now() - {ts}}}ms`);\n  return res.json();\n}}\n\n",
            port = 1024 + r.below(60_000),
            n = r.below(10),
            b1 = r.below(1000),
            b2 = r.below(5000),
            b3 = r.below(30_000),
            build = r.hex(7),
            name = r.pick(&["Order", "User", "Invoice", "Report"]),
            v = 1 + r.below(3),
            l = r.below(500),
            ts = 1_700_000_000_000u64 + r.below(10_000_000_000),
        )),
    }
}

fn logs(r: &mut Rng, out: &mut String) {
    let n = 3 + r.below(6);
    for _ in 0..n {
        out.push_str(&format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {} request_id={} method={} path=/api/v1/{}/{} status={} duration_ms={} bytes={} upstream=10.{}.{}.{}:{}\n",
            1 + r.below(12),
            1 + r.below(28),
            r.below(24),
            r.below(60),
            r.below(60),
            r.below(1000),
            r.pick(&["INFO", "WARN", "DEBUG", "ERROR"]),
            uuid(r),
            r.pick(&["GET", "POST", "PUT", "DELETE"]),
            r.pick(&["orders", "users", "invoices", "sessions"]),
            r.below(10_000_000),
            r.pick(&["200", "201", "204", "400", "404", "500", "503"]),
            r.below(5000),
            r.below(1_000_000),
            r.below(256),
            r.below(256),
            r.below(256),
            1024 + r.below(60_000),
        ));
    }
    out.push('\n');
}

fn table(r: &mut Rng, out: &mut String) {
    out.push_str("| date | order | qty | unit price | total | sku |\n|---|---|---|---|---|---|\n");
    for _ in 0..(3 + r.below(6)) {
        let q = 1 + r.below(20);
        let p = r.below(10_000);
        out.push_str(&format!(
            "| 2026-{:02}-{:02} | {} | {} | {}.{:02} | {} | {}-{} |\n",
            1 + r.below(12),
            1 + r.below(28),
            100_000_000 + r.below(900_000_000),
            q,
            p / 100,
            p % 100,
            q * p,
            r.pick(&["SKU", "ITM", "PRD"]),
            r.digits(6),
        ));
    }
    out.push('\n');
}

fn luhn_complete(prefix: &str, len: usize, r: &mut Rng) -> String {
    let mut d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
    while d.len() < len - 1 {
        d.push(r.below(10) as u8);
    }
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = u32::from(x);
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    d.push(((10 - sum % 10) % 10) as u8);
    d.into_iter().map(|x| char::from(b'0' + x)).collect()
}

/// One sentence carrying one entity.
fn pii(r: &mut Rng, out: &mut String) {
    let first = *r.pick(&[
        "jane", "john", "maria", "wei", "olga", "ahmed", "lucas", "priya",
    ]);
    let last = *r.pick(&["doe", "smith", "garcia", "chen", "ivanova", "khan", "silva"]);
    let s = match r.below(9) {
        0 => format!(
            "Please reply to {first}.{last}{}@{} about the refund.",
            r.below(100),
            r.pick(&["example.com", "mail.example.org", "corp.example.net"])
        ),
        1 => format!(
            "Customer phone: +1 ({}{}) {}{}-{}, call after 5pm.",
            2 + r.below(8),
            r.digits(2),
            2 + r.below(8),
            r.digits(2),
            r.digits(4)
        ),
        2 => {
            let c = luhn_complete("4", 16, r);
            format!(
                "Card on file {} {} {} {} expires 09/28.",
                &c[0..4],
                &c[4..8],
                &c[8..12],
                &c[12..16]
            )
        }
        3 => format!(
            "Employee SSN {}-{}-{} was submitted.",
            100 + r.below(500),
            10 + r.below(89),
            1000 + r.below(8999)
        ),
        4 => format!(
            "Use OPENAI_API_KEY=sk-proj-{} for the batch job.",
            r.alnum(48)
        ),
        5 => format!(
            "export AWS_ACCESS_KEY_ID=AKIA{}",
            r.alnum(16).to_uppercase()
        ),
        6 => format!("Token ghp_{} leaked in the CI log.", r.alnum(36)),
        7 => format!(
            "Connected from 203.0.{}.{} to the VPN.",
            r.below(256),
            r.below(256)
        ),
        _ => format!("Wire to IBAN DE89 3704 0044 0532 0130 00 and mail {first}@example.com."),
    };
    out.push_str(&s);
    out.push_str("\n\n");
}

/// Relative weights of the block kinds: prose, code/JSON, logs, tables.
#[derive(Clone, Copy, Debug)]
pub struct Mix(pub [u64; 4]);

impl Mix {
    /// `"62,25,7,6"`.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let v: Vec<u64> = s
            .split(',')
            .map(|x| x.trim().parse::<u64>().map_err(|e| format!("{x:?}: {e}")))
            .collect::<Result<_, _>>()?;
        match v.as_slice() {
            [a, b, c, d] if a + b + c + d > 0 => Ok(Mix([*a, *b, *c, *d])),
            _ => Err("expected four weights: prose,code,logs,tables".to_owned()),
        }
    }
}

/// At least `size` bytes of mixed text.
pub fn generate(size: usize, seed: u64, mix: Mix) -> String {
    let mut r = Rng::new(seed);
    let mut out = String::with_capacity(size + 4096);
    let mut since_pii = 0usize;
    let [p, c, l, t] = mix.0;
    while out.len() < size {
        let before = out.len();
        let x = r.below(p + c + l + t);
        if x < p {
            prose(&mut r, &mut out);
        } else if x < p + c {
            code(&mut r, &mut out);
        } else if x < p + c + l {
            logs(&mut r, &mut out);
        } else {
            table(&mut r, &mut out);
        }
        since_pii += out.len() - before;
        if since_pii >= 2048 {
            pii(&mut r, &mut out);
            since_pii = 0;
        }
    }
    out
}
