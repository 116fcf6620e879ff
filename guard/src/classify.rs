//! Scoring a Llama Guard prompt with a local model: one prefill of the prompt followed by
//! `unsafe\n` gives P(unsafe) (the probability that the first generated token is `unsafe`)
//! and, at the later positions, the category distribution given `unsafe`. Concurrent
//! classifications share padded prefills (the engine batches them).

use std::time::Instant;

use safegate_engine::{ChatTokenizer, Engine};
use safegate_verdict::Verdict;

use crate::prompt::GuardPrompt;
use crate::GuardError;

/// A verdict and what it cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Classification {
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The category the model finds likeliest given `unsafe`, in the taxonomy's codes.
    pub top_category: Option<String>,
    pub prompt_tokens: usize,
    pub latency_ms: f64,
}

/// Prompt ids: template segments with special tokens recognised, conversation text as
/// plain text; a BOS first unless the template writes its own.
pub fn encode_prompt(
    tok: &ChatTokenizer,
    prompt: &GuardPrompt,
    bos: Option<u32>,
) -> Result<Vec<u32>, GuardError> {
    let mut ids = Vec::new();
    let text_has_bos = prompt
        .segments
        .first()
        .is_some_and(|s| s.text.starts_with("<|begin_of_text|>"));
    if let (Some(b), false) = (bos, text_has_bos) {
        ids.push(b);
    }
    ids.extend(
        tok.encode_segments(prompt.segments.iter().map(|s| (s.text.as_str(), s.trusted)))
            .map_err(GuardError::Engine)?,
    );
    Ok(ids)
}

/// A next-token distribution: the softmax of `logits`, normalised once. Reading a token's
/// probability is then one `exp`; normalising is one per vocabulary entry (128,256 for
/// Llama 3), which per code read cost a classification about 8 ms.
struct Softmax<'a> {
    logits: &'a [f32],
    max: f64,
    total: f64,
}

impl<'a> Softmax<'a> {
    fn new(logits: &'a [f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let total = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        Softmax { logits, max, total }
    }

    fn p(&self, id: u32) -> f64 {
        self.logits
            .get(id as usize)
            .map_or(0.0, |&l| (l as f64 - self.max).exp() / self.total)
    }
}

/// The local backend: Llama Guard (or a model in its place) run by the engine.
pub struct LocalGuard {
    engine: Engine,
}

impl LocalGuard {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Scores a prompt (blocking; call from a worker thread, not an async task).
    pub fn classify_blocking(&self, prompt: &GuardPrompt) -> Result<Classification, GuardError> {
        let t0 = Instant::now();
        let tok = self.engine.tokenizer();
        let bos = self.engine.info().config.bos_token_id;
        let ids = encode_prompt(tok, prompt, bos)?;
        let first = |word: &str| -> Result<u32, GuardError> {
            tok.encode_plain(word)
                .map_err(GuardError::Engine)?
                .first()
                .copied()
                .ok_or_else(|| {
                    GuardError::Model(format!("the tokenizer has no token for `{word}`"))
                })
        };
        let unsafe_id = first("unsafe")?;

        // Categories: the code tokens after "unsafe\n". One forward pass over the prompt
        // followed by "unsafe\n" and the prefix every code shares (the `S`) gives P(unsafe)
        // and the distribution of the code's next token (teacher forcing: each position
        // sees only what precedes it).
        let head = tok.encode_plain("unsafe\n").map_err(GuardError::Engine)?;
        let mut code_tokens = Vec::with_capacity(prompt.codes.len());
        for (prompt_code, _) in &prompt.codes {
            let all = tok
                .encode_plain(&format!("unsafe\n{prompt_code}"))
                .map_err(GuardError::Engine)?;
            let tail = all
                .strip_prefix(head.as_slice())
                .map(<[u32]>::to_vec)
                .unwrap_or(all);
            code_tokens.push(tail);
        }
        let common = common_prefix(&code_tokens);
        let mut continuation = head.clone();
        continuation.extend(&code_tokens[0][..common]);
        // Codes of several tokens beyond the shared prefix need the positions after their
        // own tokens: one more row each (identical rows once), scored in the same batch.
        let mut context = ids.clone();
        context.extend(&continuation);
        let mut rows = vec![(ids.clone(), continuation.clone())];
        let mut row_of_code = Vec::with_capacity(code_tokens.len());
        for tokens in &code_tokens {
            let rest = &tokens[common..];
            if rest.len() > 1 {
                let row = (context.clone(), rest[..rest.len() - 1].to_vec());
                let at = rows.iter().position(|r| *r == row).unwrap_or_else(|| {
                    rows.push(row);
                    rows.len() - 1
                });
                row_of_code.push(Some(at));
            } else {
                row_of_code.push(None);
            }
        }
        let scored = self
            .engine
            .score_many_blocking(rows)
            .map_err(GuardError::Engine)?;
        let steps = &scored[0];
        let p_unsafe = Softmax::new(&steps[0]).p(unsafe_id);
        // P(the shared prefix | unsafe\n): the same factor for every code.
        let mut p_common = 1.0;
        for (k, &t) in continuation.iter().enumerate().skip(head.len()) {
            p_common *= Softmax::new(&steps[k]).p(t);
        }
        let base = Softmax::new(&steps[continuation.len()]);
        let mut given_unsafe = Vec::with_capacity(prompt.codes.len());
        for (((_, reported), tokens), row) in
            prompt.codes.iter().zip(&code_tokens).zip(&row_of_code)
        {
            let rest = &tokens[common..];
            let mut p = p_common
                * match rest.first() {
                    Some(&t) => base.p(t),
                    None => 1.0,
                };
            if let Some(row) = row {
                let more = &scored[*row];
                for (k, &t) in rest.iter().enumerate().skip(1) {
                    p *= Softmax::new(&more[k]).p(t);
                }
            }
            given_unsafe.push((reported.clone(), p));
        }
        Ok(Classification::from_scores(
            prompt,
            p_unsafe,
            given_unsafe,
            ids.len(),
            t0,
        ))
    }
}

impl Classification {
    /// A classification from P(unsafe) and, per listed category (reported code), the
    /// probability of its code given `unsafe`: scores are the joint probabilities.
    pub(crate) fn from_scores(
        prompt: &GuardPrompt,
        p_unsafe: f64,
        given_unsafe: Vec<(String, f64)>,
        prompt_tokens: usize,
        started: Instant,
    ) -> Self {
        let top_category = top_category(&given_unsafe);
        Classification {
            verdict: Verdict {
                taxonomy: Some(prompt.taxonomy),
                p_unsafe,
                category_scores: given_unsafe
                    .into_iter()
                    .map(|(c, p)| (c, p_unsafe * p))
                    .collect(),
                codes: Vec::new(),
            },
            top_category,
            prompt_tokens,
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
        }
    }
}

/// The code with the highest score (the first of equals), if any.
pub(crate) fn top_category(scores: &[(String, f64)]) -> Option<String> {
    scores
        .iter()
        .fold(None::<&(String, f64)>, |best, c| match best {
            Some(b) if b.1 >= c.1 => Some(b),
            _ => Some(c),
        })
        .map(|(c, _)| c.clone())
}

fn common_prefix(seqs: &[Vec<u32>]) -> usize {
    let Some(first) = seqs.first() else { return 0 };
    let mut n = first.len();
    for s in seqs {
        n = n.min(s.iter().zip(first).take_while(|(a, b)| a == b).count());
    }
    // Keep at least one token to score for every code.
    n.min(
        seqs.iter()
            .map(Vec::len)
            .min()
            .unwrap_or(0)
            .saturating_sub(1),
    )
}
