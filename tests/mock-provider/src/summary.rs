//! Reading what the mock needs from a request body in one pass, without building a
//! `serde_json::Value` tree: the model, the stream flags, the max-token fields and
//! the word counts of `messages` and `system`. This is the hot path of the
//! gateway-overhead benchmark, where tree building and its allocations dominated.
//!
//! The word counts follow [`crate::usage::content_words`] exactly: every string, and
//! in objects the `text` string plus whatever `content` holds.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::usage::{DEFAULT_OUTPUT_TOKENS, words};

/// The fields of a request body the answer depends on (for every endpoint; the
/// Responses and Embeddings endpoints read a few more from a full parse).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) model: Option<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    max_completion_tokens: Option<u64>,
    max_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    /// Words in `messages`.
    pub(crate) message_words: u64,
    /// Words in `system` (Anthropic).
    pub(crate) system_words: u64,
}

impl Summary {
    /// Parses a JSON object; anything else is an error.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// `min(max tokens asked for, 12)`: see [`crate::usage::output_tokens`].
    pub(crate) fn output_tokens(&self) -> u64 {
        self.max_completion_tokens
            .or(self.max_tokens)
            .or(self.max_output_tokens)
            .map_or(DEFAULT_OUTPUT_TOKENS, |max| max.min(DEFAULT_OUTPUT_TOKENS))
    }
}

/// Top-level keys the summary reads; everything else is skipped.
enum Key {
    Model,
    Stream,
    StreamOptions,
    MaxCompletionTokens,
    MaxTokens,
    MaxOutputTokens,
    Messages,
    System,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "model" => Key::Model,
                    "stream" => Key::Stream,
                    "stream_options" => Key::StreamOptions,
                    "max_completion_tokens" => Key::MaxCompletionTokens,
                    "max_tokens" => Key::MaxTokens,
                    "max_output_tokens" => Key::MaxOutputTokens,
                    "messages" => Key::Messages,
                    "system" => Key::System,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Any JSON value, keeping only a string, a non-negative integer or a boolean.
enum Scalar {
    Str(String),
    U64(u64),
    Bool(bool),
    Other,
}

impl Scalar {
    fn into_string(self) -> Option<String> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// What `Value::as_u64` accepts.
    fn as_u64(&self) -> Option<u64> {
        match self {
            Self::U64(n) => Some(*n),
            _ => None,
        }
    }

    fn is_true(&self) -> bool {
        matches!(self, Self::Bool(true))
    }
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(s.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar::U64(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
                Ok(u64::try_from(n).map_or(Scalar::Other, Scalar::U64))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `stream_options`: only `include_usage: true` matters.
struct StreamOptions(bool);

impl<'de> serde::Deserialize<'de> for StreamOptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamOptions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StreamOptions, A::Error> {
                let mut include_usage = false;
                while let Some(key) = map.next_key::<Scalar>()? {
                    if key.into_string().as_deref() == Some("include_usage") {
                        include_usage = map.next_value::<Scalar>()?.is_true();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(StreamOptions(include_usage))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<StreamOptions, E> {
                Ok(StreamOptions(false))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<StreamOptions, E> {
                Ok(StreamOptions(false))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<StreamOptions, E> {
                Ok(StreamOptions(false))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<StreamOptions, E> {
                Ok(StreamOptions(false))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<StreamOptions, E> {
                Ok(StreamOptions(false))
            }
            fn visit_unit<E: de::Error>(self) -> Result<StreamOptions, E> {
                Ok(StreamOptions(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StreamOptions, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(StreamOptions(false))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Words of a message-ish value (see the module docs), counted while parsing.
struct ContentWords(u64);

/// Keys of an object inside content that carry words.
enum ContentKey {
    Text,
    Content,
    Other,
}

impl<'de> serde::Deserialize<'de> for ContentKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = ContentKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<ContentKey, E> {
                Ok(match key {
                    "text" => ContentKey::Text,
                    "content" => ContentKey::Content,
                    _ => ContentKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Words of a string; 0 for anything else (an object's `text` that is not a string).
struct TextWords(u64);

impl<'de> serde::Deserialize<'de> for TextWords {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextWords;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TextWords, E> {
                Ok(TextWords(words(s)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TextWords, E> {
                Ok(TextWords(0))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TextWords, E> {
                Ok(TextWords(0))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TextWords, E> {
                Ok(TextWords(0))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TextWords, E> {
                Ok(TextWords(0))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TextWords, E> {
                Ok(TextWords(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextWords, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TextWords(0))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextWords, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TextWords(0))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> serde::Deserialize<'de> for ContentWords {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ContentVisitor)
    }
}

struct ContentVisitor;

impl<'de> Visitor<'de> for ContentVisitor {
    type Value = ContentWords;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<ContentWords, E> {
        Ok(ContentWords(words(s)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<ContentWords, E> {
        Ok(ContentWords(0))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<ContentWords, E> {
        Ok(ContentWords(0))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<ContentWords, E> {
        Ok(ContentWords(0))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<ContentWords, E> {
        Ok(ContentWords(0))
    }
    fn visit_unit<E: de::Error>(self) -> Result<ContentWords, E> {
        Ok(ContentWords(0))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ContentWords, A::Error> {
        let mut total = 0;
        while let Some(item) = seq.next_element::<ContentWords>()? {
            total += item.0;
        }
        Ok(ContentWords(total))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ContentWords, A::Error> {
        let mut total = 0;
        while let Some(key) = map.next_key::<ContentKey>()? {
            total += match key {
                ContentKey::Text => map.next_value::<TextWords>()?.0,
                ContentKey::Content => map.next_value::<ContentWords>()?.0,
                ContentKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                    0
                }
            };
        }
        Ok(ContentWords(total))
    }
}

impl<'de> serde::Deserialize<'de> for Summary {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Summary;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Summary, A::Error> {
                // Later duplicates win, as they do in `serde_json::Value`.
                let mut summary = Summary::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Model => summary.model = map.next_value::<Scalar>()?.into_string(),
                        Key::Stream => summary.stream = map.next_value::<Scalar>()?.is_true(),
                        Key::StreamOptions => {
                            summary.include_usage = map.next_value::<StreamOptions>()?.0;
                        }
                        Key::MaxCompletionTokens => {
                            summary.max_completion_tokens = map.next_value::<Scalar>()?.as_u64();
                        }
                        Key::MaxTokens => summary.max_tokens = map.next_value::<Scalar>()?.as_u64(),
                        Key::MaxOutputTokens => {
                            summary.max_output_tokens = map.next_value::<Scalar>()?.as_u64();
                        }
                        Key::Messages => {
                            summary.message_words = map.next_value::<ContentWords>()?.0;
                        }
                        Key::System => summary.system_words = map.next_value::<ContentWords>()?.0,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(summary)
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::usage::{content_words, output_tokens};

    fn check(body: Value) {
        let bytes = serde_json::to_vec(&body).expect("serialize");
        let summary = Summary::parse(&bytes).expect("parse");
        assert_eq!(
            summary.model.as_deref(),
            body.get("model").and_then(Value::as_str),
            "{body}"
        );
        assert_eq!(
            summary.stream,
            body.get("stream") == Some(&json!(true)),
            "{body}"
        );
        assert_eq!(
            summary.include_usage,
            body.pointer("/stream_options/include_usage") == Some(&json!(true)),
            "{body}"
        );
        assert_eq!(summary.output_tokens(), output_tokens(&body), "{body}");
        assert_eq!(
            summary.message_words,
            body.get("messages").map_or(0, content_words),
            "{body}"
        );
        assert_eq!(
            summary.system_words,
            body.get("system").map_or(0, content_words),
            "{body}"
        );
    }

    #[test]
    fn agrees_with_the_value_based_rules() {
        check(json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "be  brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "one two\nthree \u{00e9}t\u{00e9}"},
                {"type": "image_url", "image_url": {"url": "x y", "text": "not counted? yes counted"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"function": {"arguments": "{\"a\": 1}"}}]},
            {"role": "tool", "content": [{"type": "tool_result", "content": [{"type": "text", "text": "r s"}]}]}
        ], "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}}));
        check(json!({"model": 3, "messages": "a b", "max_completion_tokens": 2, "max_tokens": 9}));
        check(
            json!({"model": "c", "system": [{"type": "text", "text": "s t u"}], "messages": [],
            "max_output_tokens": 40, "stream": "yes", "stream_options": {"include_usage": 1}}),
        );
        check(
            json!({"model": "m", "max_tokens": -1, "messages": [{"text": 5, "content": [1, true, {"text": "x"}]}]}),
        );
        check(json!({}));
    }

    #[test]
    fn rejects_non_objects() {
        assert!(Summary::parse(b"[1]").is_err());
        assert!(Summary::parse(b"\"x\"").is_err());
        assert!(Summary::parse(b"{").is_err());
        assert!(Summary::parse(b"").is_err());
    }
}
