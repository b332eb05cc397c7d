//! Which API a request path belongs to.

use crate::config::ProviderKind;

/// A metered API, or a path the gateway may only proxy unmetered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Responses,
    Embeddings,
    AnthropicMessages,
}

impl Api {
    /// Classifies a request path (query string excluded).
    pub fn from_path(path: &str) -> Option<Api> {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" | "/chat/completions" => Some(Api::ChatCompletions),
            "/v1/responses" | "/responses" => Some(Api::Responses),
            "/v1/embeddings" | "/embeddings" => Some(Api::Embeddings),
            "/v1/messages" => Some(Api::AnthropicMessages),
            _ => None,
        }
    }

    pub fn family(self) -> ProviderKind {
        match self {
            Api::AnthropicMessages => ProviderKind::Anthropic,
            _ => ProviderKind::OpenAi,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat.completions",
            Api::Responses => "responses",
            Api::Embeddings => "embeddings",
            Api::AnthropicMessages => "messages",
        }
    }
}

/// The family an unmetered path belongs to, guessed from its shape: Anthropic's
/// SDK sends `x-api-key`, OpenAI's `Authorization: Bearer`.
pub fn family_from_headers(has_x_api_key: bool) -> ProviderKind {
    if has_x_api_key {
        ProviderKind::Anthropic
    } else {
        ProviderKind::OpenAi
    }
}

/// Path to request upstream. OpenAI-style base URLs end in the API version
/// (`https://api.openai.com/v1`, as given to the OpenAI SDK), so our `/v1`
/// prefix is dropped; Anthropic base URLs are the bare host
/// (`https://api.anthropic.com`, as given to the Anthropic SDK).
pub fn upstream_url(base_url: &str, kind: ProviderKind, path_and_query: &str) -> String {
    match kind {
        ProviderKind::OpenAi => {
            let rest = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
            format!("{base_url}{rest}")
        }
        ProviderKind::Anthropic => format!("{base_url}{path_and_query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        assert_eq!(
            Api::from_path("/v1/chat/completions"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(Api::from_path("/v1/messages"), Some(Api::AnthropicMessages));
        assert_eq!(Api::from_path("/v1/models"), None);
        assert_eq!(Api::from_path("/v1/responses/"), Some(Api::Responses));
    }

    #[test]
    fn urls() {
        assert_eq!(
            upstream_url(
                "https://api.openai.com/v1",
                ProviderKind::OpenAi,
                "/v1/chat/completions"
            ),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            upstream_url(
                "https://api.anthropic.com",
                ProviderKind::Anthropic,
                "/v1/messages?beta=true"
            ),
            "https://api.anthropic.com/v1/messages?beta=true"
        );
    }
}
