//! Request bodies: a realistic prompt of about `--prompt-bytes` of English prose,
//! sprinkled with emails, phone numbers, amounts and ids so a PII scanner in the
//! gateway has real work, wrapped in the JSON of the API the path names.

use bytes::Bytes;
use serde_json::{Value, json};

/// Bodies differ slightly (different seeds) so nothing can cache one answer.
pub const VARIANTS: usize = 16;

const WORDS: &[&str] = &[
    "the",
    "customer",
    "asked",
    "about",
    "their",
    "order",
    "and",
    "we",
    "need",
    "to",
    "check",
    "whether",
    "shipping",
    "was",
    "delayed",
    "because",
    "of",
    "the",
    "weather",
    "please",
    "summarize",
    "account",
    "history",
    "for",
    "last",
    "quarter",
    "including",
    "refunds",
    "invoices",
    "support",
    "tickets",
    "team",
    "reported",
    "that",
    "payment",
    "failed",
    "twice",
    "before",
    "succeeded",
    "on",
    "third",
    "attempt",
    "meeting",
    "notes",
    "mention",
    "a",
    "follow-up",
    "with",
    "engineering",
    "regarding",
    "latency",
    "in",
    "checkout",
    "service",
    "which",
    "affects",
    "mobile",
    "users",
    "most",
    "product",
    "manager",
    "wants",
    "short",
    "report",
    "by",
    "Friday",
    "describing",
    "root",
    "cause",
    "next",
    "steps",
    "owner",
    "contract",
    "renewal",
    "is",
    "due",
    "soon",
    "legal",
    "reviewed",
    "terms",
    "updated",
    "pricing",
    "discount",
    "applies",
    "only",
    "if",
    "volume",
    "exceeds",
    "threshold",
    "warehouse",
    "in",
    "Rotterdam",
    "confirmed",
    "pallets",
    "left",
    "yesterday",
    "morning",
];

const FIRST: &[&str] = &[
    "jane", "omar", "li", "maria", "tom", "aisha", "pierre", "yuki",
];
const LAST: &[&str] = &[
    "doe", "haddad", "wei", "garcia", "becker", "khan", "martin", "sato",
];

/// xorshift64*: deterministic and good enough to vary text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn pii(rng: &mut Rng) -> String {
    let first = rng.pick(FIRST);
    let last = rng.pick(LAST);
    match rng.below(6) {
        0 => format!("{first}.{last}@example.com"),
        1 => format!("+1 415 555 {:04}", rng.below(10_000)),
        2 => format!("order #{}", 10_000 + rng.below(90_000)),
        3 => format!(
            "${},{:03}.{:02}",
            1 + rng.below(99),
            rng.below(1000),
            rng.below(100)
        ),
        4 => format!(
            "10.{}.{}.{}",
            rng.below(256),
            rng.below(256),
            1 + rng.below(254)
        ),
        _ => format!("{first}_{last}{}@mail.example.org", rng.below(100)),
    }
}

/// About `bytes` bytes (never less, at most one sentence more) of prose.
pub fn prompt_text(bytes: usize, seed: u64) -> String {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut text = String::with_capacity(bytes + 200);
    let mut sentences = 0;
    while text.len() < bytes {
        let len = 8 + rng.below(12);
        for i in 0..len {
            let word = if rng.below(14) == 0 {
                pii(&mut rng)
            } else {
                rng.pick(WORDS).to_owned()
            };
            if i == 0 {
                let mut chars = word.chars();
                if let Some(c) = chars.next() {
                    text.extend(c.to_uppercase());
                    text.push_str(chars.as_str());
                }
            } else {
                text.push(' ');
                text.push_str(&word);
            }
        }
        text.push('.');
        sentences += 1;
        text.push_str(if sentences % 5 == 0 { "\n\n" } else { " " });
    }
    text
}

/// Which API the path belongs to, which decides the body and the auth header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Responses,
    Embeddings,
    AnthropicMessages,
}

impl Api {
    pub fn from_path(path: &str) -> Self {
        let path = path.trim_end_matches('/');
        if path.ends_with("/messages") {
            Self::AnthropicMessages
        } else if path.ends_with("/responses") {
            Self::Responses
        } else if path.ends_with("/embeddings") {
            Self::Embeddings
        } else {
            Self::ChatCompletions
        }
    }
}

const SYSTEM: &str = "You are a careful support assistant for an online shop. Answer briefly.";

/// One JSON body for `api`.
pub fn body(api: Api, model: &str, prompt: &str, max_tokens: u64, stream: bool) -> Value {
    let mut body = match api {
        Api::ChatCompletions => json!({
            "model": model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": prompt}
            ],
            "max_tokens": max_tokens,
            "temperature": 0.2
        }),
        Api::Responses => json!({
            "model": model,
            "instructions": SYSTEM,
            "input": prompt,
            "max_output_tokens": max_tokens
        }),
        Api::Embeddings => json!({"model": model, "input": prompt}),
        Api::AnthropicMessages => json!({
            "model": model,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens
        }),
    };
    if stream && api != Api::Embeddings {
        body["stream"] = json!(true);
    }
    body
}

/// [`VARIANTS`] serialized bodies.
pub fn bodies(
    api: Api,
    model: &str,
    prompt_bytes: usize,
    max_tokens: u64,
    stream: bool,
) -> Vec<Bytes> {
    (0..VARIANTS as u64)
        .map(|seed| {
            let prompt = prompt_text(prompt_bytes, seed + 1);
            // Serializing a `Value` cannot fail.
            Bytes::from(
                serde_json::to_vec(&body(api, model, &prompt, max_tokens, stream))
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_about_the_requested_size_and_has_pii() {
        for size in [64, 4096, 20_000] {
            let text = prompt_text(size, 3);
            assert!(text.len() >= size);
            assert!(text.len() < size + 400, "{} for {size}", text.len());
        }
        let text = prompt_text(4096, 1);
        assert!(text.contains('@'), "has an email");
        assert!(text.chars().any(|c| c.is_ascii_digit()), "has numbers");
        assert_ne!(prompt_text(512, 1), prompt_text(512, 2));
        assert_eq!(prompt_text(512, 1), prompt_text(512, 1));
    }

    #[test]
    fn bodies_match_the_api() {
        let chat = body(Api::from_path("/v1/chat/completions"), "m", "hi", 16, false);
        assert_eq!(chat["max_tokens"], 16);
        assert_eq!(chat["messages"][1]["content"], "hi");
        assert!(chat.get("stream").is_none());
        let messages = body(Api::from_path("/v1/messages"), "c", "hi", 16, true);
        assert_eq!(messages["stream"], true);
        assert_eq!(messages["system"], SYSTEM);
        assert_eq!(Api::from_path("/v1/responses"), Api::Responses);
        assert_eq!(Api::from_path("/openai/v1/embeddings"), Api::Embeddings);
        assert_eq!(
            bodies(Api::ChatCompletions, "m", 100, 16, false).len(),
            VARIANTS
        );
    }
}
