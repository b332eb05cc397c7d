//! Local token counting, for when the provider's own count is missing or not yet
//! known: the `estimated` usage of a response that reported none, and budget
//! reservations before a call is forwarded.
//!
//! - [`upper_bound_bytes`]: free. A BPE token is at least one byte, so a text's
//!   byte length bounds its token count. [`upper_bound_request_input`] applies
//!   that to a whole request body and adds what bytes cannot see (images, tool-use
//!   system prompts), or says there is no local bound at all (server-side
//!   conversation state, server tools, documents). The gateway reserves this on the
//!   fast path.
//! - [`count_text`], [`count_request_input`]: tiktoken-rs, `o200k_base` for
//!   GPT-4o/4.1/4.5/5 and the o-series, and as the approximation for Claude (whose
//!   tokenizer is not public) and unknown models; `cl100k_base` for GPT-3.5/GPT-4
//!   and the `text-embedding-*` models. Used when the budget is tight and for
//!   estimates.
//!
//! **Request counts are estimates**: the providers' exact prompt rendering is not
//! public. Each message adds [`TOKENS_PER_MESSAGE`], the reply priming
//! [`REPLY_PRIMING_TOKENS`], tool definitions count as their JSON, images and
//! documents as fixed allowances. Expect a few percent of error either way for
//! OpenAI models and more for Claude.
//!
//! The encoders take a moment to build (about 0.5 s for `o200k_base` and 0.2 s for
//! `cl100k_base` in a release build), so they are built once, lazily, and
//! [`warm_up`] lets the daemon build them in the background at start instead of
//! during the first request. Counting a 4 KiB prompt then takes about 0.4 ms
//! (`timing_report` test, release build, 2 cores).

use super::routes::Api;
use serde_json::Value;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// Tokens added for each chat message's framing (role markers, separators). The
/// OpenAI cookbook uses 3 plus 1 for a `name`; 4 errs high.
pub const TOKENS_PER_MESSAGE: u64 = 4;
/// Tokens priming the assistant's reply.
pub const REPLY_PRIMING_TOKENS: u64 = 3;
/// Estimate for one image: Anthropic's cap is about 1,600 (1.15 megapixels);
/// OpenAI's GPT-4o high detail is 85 + 170 per 512-px tile.
pub const IMAGE_TOKENS_ESTIMATE: u64 = 1_600;
/// Allowance for one image in an upper bound: above any current model's cost for
/// a single image at its largest accepted size and detail.
pub const IMAGE_TOKENS_BOUND: u64 = 10_000;
/// Estimate for one attached document, file or audio clip whose content is not
/// inline text.
pub const DOCUMENT_TOKENS_ESTIMATE: u64 = 3_000;
/// Anthropic adds a tool-use system prompt when tools are given (346 tokens for
/// current models); this errs high.
pub const ANTHROPIC_TOOL_SYSTEM_TOKENS: u64 = 500;
/// Anthropic's client-side built-in tools (bash, text editor, computer use) add a
/// fixed definition of up to ~735 tokens each; this errs high.
pub const ANTHROPIC_BUILTIN_TOOL_TOKENS: u64 = 1_500;

/// A tiktoken encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();

fn encoder(encoding: Encoding) -> Option<&'static CoreBPE> {
    match encoding {
        Encoding::O200kBase => O200K.get_or_init(|| trimmed(tiktoken_rs::o200k_base().ok())),
        Encoding::Cl100kBase => CL100K.get_or_init(|| trimmed(tiktoken_rs::cl100k_base().ok())),
    }
    .as_ref()
}

/// Builds both encoders now (blocking; call it from a background thread at
/// start). Later calls return at once.
/// Building an encoder allocates far more scratch memory than the encoder
/// keeps (tens of MiB); hand it back to the system once it is built.
fn trimmed(e: Option<CoreBPE>) -> Option<CoreBPE> {
    // SAFETY: malloc_trim only releases free heap memory; it has no
    // preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    e
}

/// Builds both encoders now (~0.5 s, ~20 MiB each). The daemon does *not*
/// call this at start: encoders load lazily, the first time a call needs an
/// exact count (a tight budget, or a provider that reported no usage), so a
/// daemon whose providers report usage never pays for them.
pub fn warm_up() {
    let _ = encoder(Encoding::O200kBase);
    let _ = encoder(Encoding::Cl100kBase);
}

/// Makes sure the encoder counting `model` is built, building it (~0.5 s) on
/// tokio's blocking pool if needed: a gateway worker thread serves many
/// connections and must never stall on it. Call before counting.
pub async fn ready(model: &str) {
    let encoding = encoding_for_model(model);
    let built = match encoding {
        Encoding::O200kBase => O200K.get().is_some(),
        Encoding::Cl100kBase => CL100K.get().is_some(),
    };
    if !built {
        let _ = tokio::task::spawn_blocking(move || {
            let _ = encoder(encoding);
        })
        .await;
    }
}

/// Whether both encoders are built.
pub fn is_warm() -> bool {
    O200K.get().is_some() && CL100K.get().is_some()
}

/// The encoding that counts `model`'s tokens (exactly for OpenAI models, as an
/// approximation for others). Accepts provider prefixes (`openai/gpt-4o`) and
/// fine-tune names (`ft:gpt-4o-mini:org::id`).
pub fn encoding_for_model(model: &str) -> Encoding {
    let m = model.rsplit('/').next().unwrap_or(model);
    let m = m.strip_prefix("ft:").unwrap_or(m);
    const O200K_PREFIXES: &[&str] = &[
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "gpt-oss",
        "chatgpt-4o",
        "o1",
        "o3",
        "o4",
        "codex",
    ];
    const CL100K_PREFIXES: &[&str] = &[
        "gpt-4",
        "gpt-3.5",
        "gpt-35",
        "text-embedding-3",
        "text-embedding-ada-002",
        "davinci-002",
        "babbage-002",
    ];
    if O200K_PREFIXES.iter().any(|p| m.starts_with(p)) {
        Encoding::O200kBase
    } else if CL100K_PREFIXES.iter().any(|p| m.starts_with(p)) {
        Encoding::Cl100kBase
    } else {
        Encoding::O200kBase
    }
}

/// Tokens in `text` for `model` (special-token strings count as plain text).
pub fn count_text(model: &str, text: &str) -> u64 {
    count_with(encoding_for_model(model), text)
}

/// Longest piece of text handed to the tokenizer at once. tiktoken-rs's regex
/// (fancy-regex) backtracks on long whitespace runs and panics with a stack
/// overflow on about 1 MiB of spaces with `o200k_base`; 8 KiB is far below that.
pub const SEGMENT_MAX_BYTES: usize = 8 * 1024;

/// Tokens in `text` with `encoding`.
///
/// Long texts are counted in segments of at most [`SEGMENT_MAX_BYTES`], cut just
/// before a space that follows a non-space character: tiktoken's pre-tokenizer
/// always splits there, so the count is unchanged. Only a run of that length with
/// no such place (one huge word, whitespace, unspaced scripts) is cut elsewhere,
/// which can add a token per cut. If the encoder is unavailable, or panics on some
/// input, the byte length (an upper bound) is used instead.
pub fn count_with(encoding: Encoding, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let Some(bpe) = encoder(encoding) else {
        return upper_bound_bytes(text.len());
    };
    segments(text)
        .map(|seg| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bpe.count_ordinary(seg)))
                .map_or(upper_bound_bytes(seg.len()), |n| n as u64)
        })
        .fold(0u64, u64::saturating_add)
}

/// Splits `text` into pieces of at most [`SEGMENT_MAX_BYTES`] (see [`count_with`]).
fn segments(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() <= SEGMENT_MAX_BYTES {
            return Some(std::mem::take(&mut rest));
        }
        let b = rest.as_bytes();
        let natural = (1..=SEGMENT_MAX_BYTES)
            .rev()
            .find(|&i| b[i] == b' ' && !b[i - 1].is_ascii_whitespace());
        let cut = natural.unwrap_or_else(|| {
            let mut i = SEGMENT_MAX_BYTES;
            while !rest.is_char_boundary(i) {
                i -= 1;
            }
            i
        });
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

/// An upper bound on the tokens of a text of `text_len` bytes: the byte length
/// itself, since every BPE token is at least one byte.
pub fn upper_bound_bytes(text_len: usize) -> u64 {
    text_len as u64
}

/// An estimate of the input tokens of a request body of `api` for `model` (the
/// model the call goes to, which picks the encoding); see the module docs for
/// what it counts and how far off it can be.
pub fn count_request_input(api: Api, model: &str, body: &Value) -> u64 {
    let mut c = Counter {
        encoding: encoding_for_model(model),
        tokens: 0,
    };
    match api {
        Api::ChatCompletions => c.openai_chat(body),
        Api::Responses => c.openai_responses(body),
        Api::Embeddings => c.embeddings_input(body.get("input")),
        Api::AnthropicMessages => c.anthropic(body),
    }
    c.tokens
}

/// Whether the input of a request can be bounded locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputBound {
    /// The provider will bill at most this many input tokens.
    Bounded(u64),
    /// The request makes the provider add input the gateway cannot see; the
    /// gateway must fall back to a configured cap. The reason is for logs.
    Unbounded(&'static str),
}

/// An upper bound on the input tokens of a request, without tokenizing:
/// `body_len` (the body's byte length, which covers every text, tool definition and
/// per-message framing in it) plus [`IMAGE_TOKENS_BOUND`] per image and Anthropic's
/// tool-use system prompts. `Unbounded` when the request brings in input that is not
/// in the body: Responses `previous_response_id`, `conversation` or a stored
/// `prompt`; server-side tools that feed results back as input (web search, file
/// search, MCP, code execution, web fetch); documents and files, whose page count
/// is unknown; Anthropic `mcp_servers`.
pub fn upper_bound_request_input(api: Api, body: &Value, body_len: usize) -> InputBound {
    let mut extra: u64 = 0;
    let mut scan = BoundScan::default();
    match api {
        Api::Embeddings => return InputBound::Bounded(upper_bound_bytes(body_len)),
        Api::ChatCompletions => {
            if body.get("web_search_options").is_some_and(|v| !v.is_null()) {
                return InputBound::Unbounded("web search options");
            }
            for m in array(body.get("messages")) {
                scan.content(m.get("content"));
            }
        }
        Api::Responses => {
            for (key, why) in [
                ("previous_response_id", "previous_response_id"),
                ("conversation", "server-side conversation"),
                ("prompt", "stored prompt template"),
            ] {
                if body.get(key).is_some_and(|v| !v.is_null()) {
                    return InputBound::Unbounded(why);
                }
            }
            for tool in array(body.get("tools")) {
                let kind = tool
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("function");
                if !matches!(kind, "function" | "custom") {
                    return InputBound::Unbounded("server-side tool");
                }
            }
            match body.get("input") {
                Some(Value::Array(items)) => {
                    for item in items {
                        if item.get("type").and_then(Value::as_str) == Some("item_reference") {
                            return InputBound::Unbounded("item reference");
                        }
                        scan.content(item.get("content"));
                        scan.content(item.get("output"));
                    }
                }
                other => scan.content(other),
            }
        }
        Api::AnthropicMessages => {
            if body.get("mcp_servers").is_some_and(|v| !v.is_null()) {
                return InputBound::Unbounded("MCP servers");
            }
            let tools = array(body.get("tools"));
            if !tools.is_empty() {
                extra += ANTHROPIC_TOOL_SYSTEM_TOKENS;
            }
            for tool in tools {
                match tool.get("type").and_then(Value::as_str) {
                    None | Some("custom") => {}
                    Some(t) if is_anthropic_server_tool(t) => {
                        return InputBound::Unbounded("server-side tool");
                    }
                    Some(_) => extra += ANTHROPIC_BUILTIN_TOOL_TOKENS,
                }
            }
            scan.content(body.get("system"));
            for m in array(body.get("messages")) {
                scan.content(m.get("content"));
            }
        }
    }
    if let Some(why) = scan.unbounded {
        return InputBound::Unbounded(why);
    }
    let images = scan.images.saturating_mul(IMAGE_TOKENS_BOUND);
    InputBound::Bounded(
        upper_bound_bytes(body_len)
            .saturating_add(images)
            .saturating_add(extra),
    )
}

fn is_anthropic_server_tool(kind: &str) -> bool {
    [
        "web_search",
        "web_fetch",
        "code_execution",
        "mcp",
        "tool_search",
    ]
    .iter()
    .any(|p| kind.starts_with(p))
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Finds images and documents in message content, for the upper bound.
#[derive(Debug, Default)]
struct BoundScan {
    images: u64,
    unbounded: Option<&'static str>,
}

impl BoundScan {
    fn content(&mut self, v: Option<&Value>) {
        let Some(Value::Array(parts)) = v else {
            return;
        };
        for part in parts {
            match part.get("type").and_then(Value::as_str).unwrap_or("") {
                "image" | "image_url" | "input_image" => self.images += 1,
                "document" | "file" | "input_file" | "container_upload" => {
                    self.unbounded = Some("document or file input");
                }
                // Anthropic tool results nest content blocks.
                "tool_result" => self.content(part.get("content")),
                _ => {}
            }
        }
    }
}

/// Sums token counts over the parts of a request.
struct Counter {
    encoding: Encoding,
    tokens: u64,
}

impl Counter {
    fn add(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_add(n);
    }

    fn text(&mut self, s: Option<&Value>) {
        if let Some(s) = s.and_then(Value::as_str) {
            self.add(count_with(self.encoding, s));
        }
    }

    fn str(&mut self, s: &str) {
        self.add(count_with(self.encoding, s));
    }

    /// Structured data the provider renders into the prompt (tool schemas, tool
    /// inputs): counted as its compact JSON, which errs high.
    fn json(&mut self, v: Option<&Value>) {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => self.str(s),
            Some(v) => self.str(&v.to_string()),
        }
    }

    fn tools(&mut self, tools: Option<&Value>) {
        for tool in array(tools) {
            self.json(Some(tool));
        }
    }

    /// Message content in any API's shape: a string, or parts/blocks.
    fn content(&mut self, v: Option<&Value>) {
        match v {
            Some(Value::String(s)) => self.str(s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    self.part(part);
                }
            }
            _ => {}
        }
    }

    fn part(&mut self, part: &Value) {
        if let Value::String(s) = part {
            self.str(s);
            return;
        }
        match part.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" | "input_text" | "output_text" => self.text(part.get("text")),
            "refusal" => self.text(part.get("refusal")),
            "image" | "image_url" | "input_image" => self.add(IMAGE_TOKENS_ESTIMATE),
            "document" => match part.pointer("/source/type").and_then(Value::as_str) {
                Some("text") => self.text(part.pointer("/source/data")),
                Some("content") => self.content(part.pointer("/source/content")),
                _ => self.add(DOCUMENT_TOKENS_ESTIMATE),
            },
            "file" | "input_file" => self.add(DOCUMENT_TOKENS_ESTIMATE),
            "input_audio" => self.add(DOCUMENT_TOKENS_ESTIMATE),
            "tool_use" | "server_tool_use" => {
                self.text(part.get("name"));
                self.json(part.get("input"));
            }
            "tool_result" => self.content(part.get("content")),
            "thinking" => self.text(part.get("thinking")),
            "redacted_thinking" => self.text(part.get("data")),
            _ => self.json(Some(part)),
        }
    }

    fn openai_chat(&mut self, body: &Value) {
        for m in array(body.get("messages")) {
            self.add(TOKENS_PER_MESSAGE);
            self.text(m.get("role"));
            self.content(m.get("content"));
            if m.get("name").is_some_and(Value::is_string) {
                self.text(m.get("name"));
                self.add(1);
            }
            self.text(m.get("refusal"));
            let calls = array(m.get("tool_calls")).iter();
            for f in calls
                .filter_map(|c| c.get("function"))
                .chain(m.get("function_call"))
            {
                self.text(f.get("name"));
                self.text(f.get("arguments"));
                self.add(1);
            }
        }
        self.tools(body.get("tools"));
        self.tools(body.get("functions"));
        self.json(body.pointer("/response_format/json_schema"));
        self.add(REPLY_PRIMING_TOKENS);
    }

    fn openai_responses(&mut self, body: &Value) {
        if let Some(instructions) = body.get("instructions") {
            self.add(TOKENS_PER_MESSAGE);
            self.content(Some(instructions));
        }
        match body.get("input") {
            Some(Value::String(s)) => {
                self.add(TOKENS_PER_MESSAGE);
                self.str(s);
            }
            Some(Value::Array(items)) => {
                for item in items {
                    self.responses_item(item);
                }
            }
            _ => {}
        }
        self.tools(body.get("tools"));
        self.json(body.pointer("/text/format/schema"));
        self.add(REPLY_PRIMING_TOKENS);
    }

    fn responses_item(&mut self, item: &Value) {
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            None | Some("message") => {
                self.add(TOKENS_PER_MESSAGE);
                self.text(item.get("role"));
                self.content(item.get("content"));
            }
            Some("function_call") => {
                self.text(item.get("name"));
                self.text(item.get("arguments"));
                self.add(1);
            }
            Some("custom_tool_call") => {
                self.text(item.get("name"));
                self.text(item.get("input"));
                self.add(1);
            }
            Some("function_call_output" | "custom_tool_call_output") => {
                self.add(TOKENS_PER_MESSAGE);
                self.content(item.get("output"));
            }
            Some("reasoning") => {
                for s in array(item.get("summary")) {
                    self.text(s.get("text"));
                }
            }
            Some(_) => self.json(Some(item)),
        }
    }

    fn embeddings_input(&mut self, input: Option<&Value>) {
        match input {
            Some(Value::String(s)) => self.str(s),
            Some(Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::String(s) => self.str(s),
                        Value::Number(_) => self.add(1), // a pre-tokenized token
                        Value::Array(tokens) => self.add(tokens.len() as u64),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn anthropic(&mut self, body: &Value) {
        if let Some(system) = body.get("system") {
            self.add(TOKENS_PER_MESSAGE);
            self.content(Some(system));
        }
        for m in array(body.get("messages")) {
            self.add(TOKENS_PER_MESSAGE);
            self.text(m.get("role"));
            self.content(m.get("content"));
        }
        let tools = array(body.get("tools"));
        if !tools.is_empty() {
            self.add(ANTHROPIC_TOOL_SYSTEM_TOKENS);
        }
        for tool in tools {
            match tool.get("type").and_then(Value::as_str) {
                None | Some("custom") => self.json(Some(tool)),
                Some(_) => self.add(ANTHROPIC_BUILTIN_TOOL_TOKENS),
            }
        }
        self.add(REPLY_PRIMING_TOKENS);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    #[test]
    fn encodings_by_model() {
        use Encoding::*;
        for (m, e) in [
            ("gpt-4o", O200kBase),
            ("gpt-4o-mini-2024-07-18", O200kBase),
            ("gpt-4.1-nano", O200kBase),
            ("gpt-5", O200kBase),
            ("o1", O200kBase),
            ("o3-mini", O200kBase),
            ("o4-mini-2025-04-16", O200kBase),
            ("openai/gpt-4o", O200kBase),
            ("ft:gpt-4o-mini:acme::abc", O200kBase),
            ("gpt-4", Cl100kBase),
            ("gpt-4-turbo", Cl100kBase),
            ("gpt-3.5-turbo", Cl100kBase),
            ("text-embedding-3-small", Cl100kBase),
            ("text-embedding-ada-002", Cl100kBase),
            ("claude-sonnet-4-5", O200kBase),
            ("mystery-model", O200kBase),
            ("", O200kBase),
        ] {
            assert_eq!(encoding_for_model(m), e, "{m}");
        }
    }

    #[test]
    fn counts_known_strings() {
        // Reference counts from OpenAI's tiktoken.
        assert_eq!(count_text("gpt-4o", "hello world"), 2);
        assert_eq!(count_text("gpt-4", "hello world"), 2);
        assert_eq!(count_text("gpt-4", "tiktoken is great!"), 6);
        assert_eq!(count_text("gpt-4o", ""), 0);
        // Special-token text is ordinary text, not an error.
        assert!(count_text("gpt-4o", "<|endoftext|>") > 1);
    }

    #[test]
    fn bytes_bound_the_count() {
        for text in [
            "hello world",
            "日本語のテキストです。",
            "emoji 🎉🎉🎉 and ümlauts",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "    \n\n\t  ",
            "x",
        ] {
            for model in ["gpt-4o", "gpt-4", "claude-sonnet-4-5"] {
                let n = count_text(model, text);
                assert!(
                    n >= 1 && n <= upper_bound_bytes(text.len()),
                    "{model} {text:?}: {n}"
                );
            }
        }
    }

    #[test]
    fn long_texts_count_as_if_whole() {
        // Prose well past one segment counts exactly as tiktoken counts it whole.
        let prose = prompt_4k().repeat(5);
        assert!(prose.len() > 2 * SEGMENT_MAX_BYTES);
        assert!(segments(&prose).count() > 2);
        let bpe = encoder(Encoding::O200kBase).unwrap();
        assert_eq!(
            count_with(Encoding::O200kBase, &prose),
            bpe.count_ordinary(&prose) as u64
        );
        let bpe = encoder(Encoding::Cl100kBase).unwrap();
        assert_eq!(
            count_with(Encoding::Cl100kBase, &prose),
            bpe.count_ordinary(&prose) as u64
        );
        // Segments rebuild the text and respect the limit and char boundaries.
        for text in [
            prose.clone(),
            "é".repeat(20_000),
            " ".repeat(20_000),
            "x".repeat(9000),
        ] {
            let segs: Vec<&str> = segments(&text).collect();
            assert_eq!(segs.concat(), text);
            assert!(
                segs.iter()
                    .all(|s| !s.is_empty() && s.len() <= SEGMENT_MAX_BYTES)
            );
        }
    }

    #[test]
    fn pathological_whitespace_does_not_panic() {
        // Whole, this makes tiktoken-rs's o200k regex overflow its stack and panic.
        let spaces = " ".repeat(1 << 20);
        let n = count_text("gpt-4o", &spaces);
        assert!(n > 0 && n <= upper_bound_bytes(spaces.len()));
    }

    #[test]
    fn warm_up_is_idempotent() {
        warm_up();
        assert!(is_warm());
        warm_up();
        assert!(is_warm());
    }

    fn chat_body() -> Value {
        json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "name": "ann", "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "lookup", "arguments": "{\"q\":\"cat\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "A cat."}
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
            "max_completion_tokens": 256
        })
    }

    #[test]
    fn openai_chat_request() {
        let body = chat_body();
        let t = |s: &str| count_text("gpt-4o", s);
        let tool_json = body["tools"][0].to_string();
        let expected = 4 * TOKENS_PER_MESSAGE
            + t("system")
            + t("You are terse.")
            + t("user")
            + t("ann")
            + 1
            + t("What is in this picture?")
            + IMAGE_TOKENS_ESTIMATE
            + t("assistant")
            + t("lookup")
            + t("{\"q\":\"cat\"}")
            + 1
            + t("tool")
            + t("A cat.")
            + t(&tool_json)
            + REPLY_PRIMING_TOKENS;
        assert_eq!(
            count_request_input(Api::ChatCompletions, "gpt-4o", &body),
            expected
        );
    }

    #[test]
    fn openai_responses_request() {
        let body = json!({
            "model": "gpt-5",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Checked."}]}
            ],
            "max_output_tokens": 500
        });
        let t = |s: &str| count_text("gpt-5", s);
        let expected = TOKENS_PER_MESSAGE
            + t("Be brief.")
            + TOKENS_PER_MESSAGE
            + t("user")
            + t("Weather in Paris?")
            + t("weather")
            + t("{}")
            + 1
            + TOKENS_PER_MESSAGE
            + t("Sunny")
            + t("Checked.")
            + REPLY_PRIMING_TOKENS;
        assert_eq!(
            count_request_input(Api::Responses, "gpt-5", &body),
            expected
        );
        let simple = json!({"model": "gpt-5", "input": "Hi there"});
        assert_eq!(
            count_request_input(Api::Responses, "gpt-5", &simple),
            TOKENS_PER_MESSAGE + t("Hi there") + REPLY_PRIMING_TOKENS
        );
    }

    #[test]
    fn embeddings_request() {
        let t = |s: &str| count_text("text-embedding-3-small", s);
        let body = json!({"model": "text-embedding-3-small", "input": "The food was delicious"});
        assert_eq!(
            count_request_input(Api::Embeddings, "text-embedding-3-small", &body),
            t("The food was delicious")
        );
        let body = json!({"model": "text-embedding-3-small", "input": ["a b", "c d e"]});
        assert_eq!(
            count_request_input(Api::Embeddings, "text-embedding-3-small", &body),
            t("a b") + t("c d e")
        );
        let body = json!({"model": "text-embedding-3-small", "input": [[1, 2, 3], [4]]});
        assert_eq!(
            count_request_input(Api::Embeddings, "text-embedding-3-small", &body),
            4
        );
        let body = json!({"model": "text-embedding-3-small", "input": [1, 2, 3]});
        assert_eq!(
            count_request_input(Api::Embeddings, "text-embedding-3-small", &body),
            3
        );
    }

    #[test]
    fn anthropic_request() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "You are terse.",
                        "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Use the tool.", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1",
                     "content": [{"type": "text", "text": "Sunny"}]},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": "iVBORw0KGgo="}}
                ]}
            ],
            "tools": [
                {"name": "weather", "input_schema": {"type": "object"}},
                {"type": "bash_20250124", "name": "bash"}
            ]
        });
        let t = |s: &str| count_text("claude-sonnet-4-5", s);
        let expected = TOKENS_PER_MESSAGE
            + t("You are terse.")
            + TOKENS_PER_MESSAGE
            + t("user")
            + t("Weather?")
            + TOKENS_PER_MESSAGE
            + t("assistant")
            + t("Use the tool.")
            + t("weather")
            + t("{\"city\":\"Paris\"}")
            + TOKENS_PER_MESSAGE
            + t("user")
            + t("Sunny")
            + IMAGE_TOKENS_ESTIMATE
            + ANTHROPIC_TOOL_SYSTEM_TOKENS
            + t(&body["tools"][0].to_string())
            + ANTHROPIC_BUILTIN_TOOL_TOKENS
            + REPLY_PRIMING_TOKENS;
        assert_eq!(
            count_request_input(Api::AnthropicMessages, "claude-sonnet-4-5", &body),
            expected
        );
    }

    #[test]
    fn upper_bounds() {
        let body = chat_body();
        let len = body.to_string().len();
        assert_eq!(
            upper_bound_request_input(Api::ChatCompletions, &body, len),
            InputBound::Bounded(len as u64 + IMAGE_TOKENS_BOUND)
        );
        // The bound is above the estimate.
        let InputBound::Bounded(b) = upper_bound_request_input(Api::ChatCompletions, &body, len)
        else {
            panic!()
        };
        assert!(b >= count_request_input(Api::ChatCompletions, "gpt-4o", &body));

        let r = json!({"model": "gpt-5", "previous_response_id": "resp_1", "input": "more"});
        assert_eq!(
            upper_bound_request_input(Api::Responses, &r, 60),
            InputBound::Unbounded("previous_response_id")
        );
        let r = json!({"model": "gpt-5", "input": "x", "tools": [{"type": "web_search"}]});
        assert!(matches!(
            upper_bound_request_input(Api::Responses, &r, 60),
            InputBound::Unbounded(_)
        ));
        let r = json!({"model": "gpt-5", "input": "x", "previous_response_id": null,
                       "tools": [{"type": "function", "name": "f"}]});
        assert_eq!(
            upper_bound_request_input(Api::Responses, &r, 99),
            InputBound::Bounded(99)
        );
        let r = json!({"model": "gpt-5", "input": [{"role": "user", "content": [
            {"type": "input_file", "file_id": "file-1"}]}]});
        assert!(matches!(
            upper_bound_request_input(Api::Responses, &r, 99),
            InputBound::Unbounded(_)
        ));

        let a = json!({"model": "claude-haiku-4-5", "max_tokens": 10,
                       "tools": [{"name": "f", "input_schema": {}},
                                 {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}],
                       "messages": [{"role": "user", "content": [
                           {"type": "tool_result", "tool_use_id": "t", "content": [
                               {"type": "image", "source": {"type": "url", "url": "https://x.invalid/a.png"}}]}]}]});
        assert_eq!(
            upper_bound_request_input(Api::AnthropicMessages, &a, 300),
            InputBound::Bounded(
                300 + ANTHROPIC_TOOL_SYSTEM_TOKENS
                    + ANTHROPIC_BUILTIN_TOOL_TOKENS
                    + IMAGE_TOKENS_BOUND
            )
        );
        let a = json!({"model": "claude-haiku-4-5", "messages": [],
                       "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
        assert!(matches!(
            upper_bound_request_input(Api::AnthropicMessages, &a, 300),
            InputBound::Unbounded(_)
        ));
        let a = json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "url", "url": "https://x.invalid/a.pdf"}}]}]});
        assert!(matches!(
            upper_bound_request_input(Api::AnthropicMessages, &a, 300),
            InputBound::Unbounded(_)
        ));
        let e = json!({"model": "text-embedding-3-small", "input": "abc"});
        assert_eq!(
            upper_bound_request_input(Api::Embeddings, &e, 50),
            InputBound::Bounded(50)
        );
    }

    #[test]
    fn odd_bodies_do_not_panic() {
        for body in [
            json!(null),
            json!([]),
            json!("x"),
            json!({"messages": "no"}),
            json!({"messages": [1, null, {"content": 5}]}),
            json!({"input": {"a": 1}}),
        ] {
            for api in [
                Api::ChatCompletions,
                Api::Responses,
                Api::Embeddings,
                Api::AnthropicMessages,
            ] {
                let _ = count_request_input(api, "gpt-4o", &body);
                let _ = upper_bound_request_input(api, &body, 10);
            }
        }
    }

    /// A ~4 KiB English prompt, deterministic.
    fn prompt_4k() -> String {
        let words = [
            "the",
            "gateway",
            "meters",
            "every",
            "call",
            "in",
            "integer",
            "micro-dollars,",
            "reserving",
            "the",
            "worst",
            "case",
            "before",
            "forwarding",
            "and",
            "settling",
            "after.",
            "Budgets",
            "cannot",
            "race:",
            "a",
            "reservation",
            "is",
            "atomic.",
            "Tokens",
            "are",
            "counted",
            "locally",
            "when",
            "the",
            "provider",
            "reports",
            "none;",
            "prices",
            "come",
            "from",
            "a",
            "table",
            "(LiteLLM",
            "format)",
            "with",
            "overrides.",
            "Function",
            "names",
            "like",
            "get_weather()",
            "and",
            "JSON",
            "{\"city\":",
            "\"Paris\"}",
            "appear",
            "too.",
            "1234",
            "5678.90",
            "\n",
        ];
        let mut s = String::new();
        let mut i = 7usize;
        while s.len() < 4096 {
            s.push_str(words[i % words.len()]);
            s.push(' ');
            i = i.wrapping_mul(31).wrapping_add(17) % 9973;
        }
        s.truncate(4096);
        s
    }

    fn time_it(f: impl Fn() -> u64, iters: u32) -> (u64, Duration) {
        let start = Instant::now();
        let mut n = 0;
        for _ in 0..iters {
            n = std::hint::black_box(f());
        }
        (n, start.elapsed() / iters)
    }

    /// Timing report, not an assertion (timings vary by machine):
    /// `cargo test --release -p ironcaged gateway::tokens -- --ignored --nocapture`
    #[test]
    #[ignore = "timing report; run with --ignored --nocapture"]
    fn timing_report() {
        let t0 = Instant::now();
        let _ = encoder(Encoding::O200kBase);
        let o200k_build = t0.elapsed();
        let t0 = Instant::now();
        let _ = encoder(Encoding::Cl100kBase);
        let cl100k_build = t0.elapsed();
        let p = prompt_4k();
        let (n_o, d_o) = time_it(|| count_text("gpt-4o", &p), 200);
        let (n_c, d_c) = time_it(|| count_text("gpt-4", &p), 200);
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": p}]});
        let (n_r, d_r) = time_it(
            || count_request_input(Api::ChatCompletions, "gpt-4o", &body),
            200,
        );
        let big = p.repeat(256); // 1 MiB
        let (n_big, d_big) = time_it(|| count_text("gpt-4o", &big), 3);
        let runs = "a".repeat(1 << 20);
        let (n_run, d_run) = time_it(|| count_text("gpt-4o", &runs), 1);
        let spaces = " ".repeat(1 << 20);
        let (n_sp, d_sp) = time_it(|| count_text("gpt-4o", &spaces), 1);
        println!("o200k_base build: {o200k_build:?}; cl100k_base build: {cl100k_build:?}");
        println!("4 KiB prompt, o200k: {n_o} tokens in {d_o:?}");
        println!("4 KiB prompt, cl100k: {n_c} tokens in {d_c:?}");
        println!("4 KiB chat request: {n_r} tokens in {d_r:?}");
        println!("1 MiB prose, o200k: {n_big} tokens in {d_big:?}");
        println!("1 MiB of 'a', o200k: {n_run} tokens in {d_run:?}");
        println!("1 MiB of spaces, o200k: {n_sp} tokens in {d_sp:?}");
    }
}
