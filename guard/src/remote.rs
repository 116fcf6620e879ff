//! The remote backend: Llama Guard served by an OpenAI-compatible `/v1/completions` server
//! with `logprobs` (vLLM, for one), which is how large deployments run it. The prompt goes
//! as token ids, tokenized here exactly as for the local backend, so the server cannot
//! turn user text into special tokens; the verdict has the same shape as the local one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use safegate_engine::ChatTokenizer;
use serde_json::{json, Value};

use crate::classify::{encode_prompt, Classification};
use crate::prompt::GuardPrompt;
use crate::GuardError;

#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// e.g. `http://vllm:8000` (the `/v1/completions` path is appended).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Per request.
    pub timeout: Duration,
    /// Further attempts after a connection error, a 429 or a 5xx.
    pub retries: u32,
    /// How many alternatives the server returns per position.
    pub top_logprobs: u32,
    /// TLS settings for an `https://` server (None: plain HTTP only).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8000".into(),
            model: "meta-llama/Meta-Llama-Guard-2-8B".into(),
            api_key: None,
            timeout: Duration::from_secs(5),
            retries: 2,
            top_logprobs: 20,
            tls: None,
        }
    }
}

pub struct RemoteGuard {
    config: RemoteConfig,
    tokenizer: ChatTokenizer,
    bos: Option<u32>,
    agent: ureq::Agent,
}

impl RemoteGuard {
    /// `tokenizer` is the guard model's (its `tokenizer.json`), `bos` its BOS id.
    pub fn new(config: RemoteConfig, tokenizer: ChatTokenizer, bos: Option<u32>) -> Self {
        let mut agent = ureq::AgentBuilder::new().timeout(config.timeout);
        if let Some(tls) = &config.tls {
            agent = agent.tls_config(tls.clone());
        }
        let agent = agent.build();
        Self {
            config,
            tokenizer,
            bos,
            agent,
        }
    }

    pub fn model(&self) -> &str {
        &self.config.model
    }

    /// Top alternatives for the next token after `ids`: token text -> log-probability.
    fn next_token_logprobs(&self, ids: &[u32]) -> Result<BTreeMap<String, f64>, GuardError> {
        let url = format!(
            "{}/v1/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let body = json!({
            "model": self.config.model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": self.config.top_logprobs,
        });
        let mut attempt = 0;
        loop {
            let mut req = self.agent.post(&url);
            if let Some(key) = &self.config.api_key {
                req = req.set("Authorization", &format!("Bearer {key}"));
            }
            let retryable = match req.send_json(body.clone()) {
                Ok(resp) => {
                    let v: Value = resp.into_json().map_err(|e| {
                        GuardError::Remote(format!("{url}: the answer is not JSON: {e}"))
                    })?;
                    return parse_top_logprobs(&v).ok_or_else(|| {
                        GuardError::Remote(format!(
                            "{url}: no choices[0].logprobs.top_logprobs[0] in the answer"
                        ))
                    });
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let err = GuardError::Remote(format!(
                        "{url}: HTTP {code}: {}",
                        text.chars().take(300).collect::<String>()
                    ));
                    if code == 429 || code >= 500 {
                        err
                    } else {
                        return Err(err);
                    }
                }
                Err(ureq::Error::Transport(t)) => {
                    let msg = t.to_string();
                    if msg.contains("timed out") || msg.contains("timeout") {
                        GuardError::Timeout(format!(
                            "{url}: no answer within {:?}",
                            self.config.timeout
                        ))
                    } else {
                        GuardError::Unavailable(format!("{url}: {msg}"))
                    }
                }
            };
            if attempt >= self.config.retries {
                return Err(retryable);
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis(50 * (1 << attempt.min(5))));
        }
    }

    /// Scores a prompt: three short requests (P(unsafe); the `S` after `unsafe\n`; the
    /// code digits), giving the same verdict as the local backend for codes of one token
    /// after `S` (Llama 3's tokenizer writes S1..S14 that way).
    pub fn classify_blocking(&self, prompt: &GuardPrompt) -> Result<Classification, GuardError> {
        let t0 = Instant::now();
        let ids = encode_prompt(&self.tokenizer, prompt, self.bos)?;
        let lp = |m: &BTreeMap<String, f64>, text: &str| {
            m.iter()
                .find(|(k, _)| k.trim() == text)
                .map_or(0.0, |(_, v)| v.exp())
        };
        let first = self.next_token_logprobs(&ids)?;
        let p_unsafe = lp(&first, "unsafe");
        let mut ctx = ids.clone();
        ctx.extend(
            self.tokenizer
                .encode_plain("unsafe\n")
                .map_err(GuardError::Engine)?,
        );
        let after_newline = self.next_token_logprobs(&ctx)?;
        let p_s = lp(&after_newline, "S");
        ctx.extend(
            self.tokenizer
                .encode_plain("S")
                .map_err(GuardError::Engine)?,
        );
        let digits = self.next_token_logprobs(&ctx)?;
        let given_unsafe = prompt
            .codes
            .iter()
            .map(|(prompt_code, reported)| {
                (
                    reported.clone(),
                    p_s * lp(&digits, prompt_code.trim_start_matches('S')),
                )
            })
            .collect();
        Ok(Classification::from_scores(
            prompt,
            p_unsafe,
            given_unsafe,
            ids.len(),
            t0,
        ))
    }
}

/// `choices[0].logprobs.top_logprobs[0]` as a map (vLLM and the OpenAI legacy format).
pub fn parse_top_logprobs(v: &Value) -> Option<BTreeMap<String, f64>> {
    let top = v
        .pointer("/choices/0/logprobs/top_logprobs/0")?
        .as_object()?;
    Some(
        top.iter()
            .filter_map(|(k, v)| v.as_f64().map(|f| (k.clone(), f)))
            .collect(),
    )
}
