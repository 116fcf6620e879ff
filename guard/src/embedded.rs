//! The embedded guard: a small classifier that ships with safegate. Features are pooled
//! hidden states of a small Llama-family model (SmolLM2-135M, the default chat model's
//! weights, imported as an encoder); light heads on top give P(unsafe), one for prompts and
//! one for responses, and the category given unsafe, in the Llama Guard 2 taxonomy.
//!
//! Long texts are cut into overlapping windows; a conversation is as unsafe as its most
//! unsafe window (so a harmful turn first or last in a long conversation still counts).
//! Concurrent classifications share one encoder run: a worker thread takes what is waiting
//! (bounded queue) and encodes it as one padded batch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use safegate_engine::session::SessionOptions;
use safegate_engine::{
    BatchCounter, ChatMessage, ChatTokenizer, Encoder, EngineError, Pooling, ScoreStats,
};
use safegate_verdict::{Taxonomy, Verdict};

use crate::classify::Classification;
use crate::prompt::{AgentType, GuardPrompt};
use crate::GuardError;

/// The head file inside an embedded guard folder.
pub const HEAD_FILE: &str = "guard_head.json";
pub const HEAD_FORMAT: &str = "safegate-guard-head/1";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
}

impl Standardizer {
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        x.iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .map(|((v, m), s)| (v - m) / s)
            .collect()
    }
}

/// Logistic regression: P(unsafe) = sigmoid(w . standardized(x) + b).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearHead {
    pub standardizer: Standardizer,
    pub weights: Vec<f32>,
    pub bias: f32,
    /// The decision threshold chosen on the validation split (reported, not enforced: the
    /// policy's own threshold decides).
    pub threshold: f64,
}

impl LinearHead {
    pub fn p_unsafe(&self, x: &[f32]) -> f64 {
        let z = self.bias as f64
            + self
                .standardizer
                .apply(x)
                .iter()
                .zip(&self.weights)
                .map(|(a, w)| (a * w) as f64)
                .sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }
}

/// Softmax regression: the category given unsafe.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CategoryHead {
    pub standardizer: Standardizer,
    pub codes: Vec<String>,
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
}

impl CategoryHead {
    pub fn given_unsafe(&self, x: &[f32]) -> Vec<(String, f64)> {
        let z = self.standardizer.apply(x);
        let mut logits: Vec<f64> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| *b as f64 + z.iter().zip(w).map(|(a, w)| (a * w) as f64).sum::<f64>())
            .collect();
        crate::measure::softmax_in_place(&mut logits);
        self.codes.iter().cloned().zip(logits).collect()
    }
}

/// What is written before and after each window of text (trusted template text).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Wrap {
    pub prefix: String,
    pub suffix: String,
}

impl Wrap {
    /// `PREFIX{text}SUFFIX` -> the two sides.
    pub fn parse(template: &str) -> Result<Self, String> {
        let (prefix, suffix) = template
            .split_once("{text}")
            .ok_or_else(|| format!("the wrapper `{template}` has no `{{text}}`"))?;
        Ok(Self {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    /// The token ids of both sides.
    pub fn ids(&self, tokenizer: &ChatTokenizer) -> Result<(Vec<u32>, Vec<u32>), EngineError> {
        Ok((
            tokenizer.encode_trusted(&self.prefix)?,
            tokenizer.encode_trusted(&self.suffix)?,
        ))
    }
}

/// A text as the heads read it: a user's (or a tool's, judged on the user's side) ended as a
/// sentence when it stops on a word, so that a missing full stop does not move the verdict
/// (`normalize::ended_as_sentence`); a reply as written.
fn as_judged(text: &str, agent: AgentType) -> std::borrow::Cow<'_, str> {
    match agent {
        AgentType::User => crate::normalize::ended_as_sentence(text),
        AgentType::Agent => std::borrow::Cow::Borrowed(text),
    }
}

/// Puts `ids` between the wrapper's sides.
pub fn wrapped(ids: &[u32], sides: &(Vec<u32>, Vec<u32>)) -> Vec<u32> {
    let mut out = Vec::with_capacity(sides.0.len() + ids.len() + sides.1.len());
    out.extend_from_slice(&sides.0);
    out.extend_from_slice(ids);
    out.extend_from_slice(&sides.1);
    out
}

/// Everything the embedded guard needs besides the encoder: `guard_head.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    pub format: String,
    pub taxonomy: Taxonomy,
    /// The encoder outputs the features come from, in order (checked at load).
    pub layers: Vec<String>,
    /// Window length and step in tokens.
    pub window_tokens: usize,
    pub window_stride: usize,
    /// How a window's hidden states become features (older heads: the mean only).
    #[serde(default)]
    pub pooling: Pooling,
    /// Text written around every window before encoding (special tokens recognised), e.g.
    /// the chat template's user turn, so that the last position is where the model would
    /// start its reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap: Option<Wrap>,
    /// A user's text is also read one sentence at a time (sentences shorter than this many
    /// characters joined to the next), the verdict the worst window's: a harmful request
    /// after a paragraph of harmless text is otherwise averaged away. Absent: whole texts
    /// only. Tool results and replies are read whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentence_windows: Option<usize>,
    pub prompt: LinearHead,
    pub response: LinearHead,
    pub categories: CategoryHead,
    /// P(a prompt attack: a jailbreak, or an injected instruction) of a text a user or a
    /// tool gave; absent from heads trained before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<LinearHead>,
    /// P(unsafe) of one sentence of a longer user text (`sentence_windows`): trained on the
    /// prompt rows and on sentences cut out of benign documents, which the prompt head has
    /// never seen alone and reads like requests. Absent: sentences are read by the prompt head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentence: Option<LinearHead>,
    /// How the head was made (command, seed, data), for the record.
    #[serde(default)]
    pub training: serde_json::Value,
}

impl Head {
    pub fn load(path: &Path) -> Result<Self, GuardError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GuardError::Model(format!("{}: {e}", path.display())))?;
        let head: Head = serde_json::from_str(&text).map_err(|e| {
            GuardError::Model(format!(
                "{}: line {}, column {}: {e}",
                path.display(),
                e.line(),
                e.column()
            ))
        })?;
        if head.format != HEAD_FORMAT {
            return Err(GuardError::Model(format!(
                "{}: format `{}`, expected `{HEAD_FORMAT}`",
                path.display(),
                head.format
            )));
        }
        if head.window_tokens == 0 || head.window_stride == 0 {
            return Err(GuardError::Model(format!(
                "{}: window_tokens and window_stride must be positive",
                path.display()
            )));
        }
        Ok(head)
    }

    fn check_dim(&self, dim: usize) -> Result<(), GuardError> {
        let dims = [
            self.prompt.weights.len(),
            self.prompt.standardizer.mean.len(),
            self.response.weights.len(),
            self.response.standardizer.mean.len(),
            self.categories.standardizer.mean.len(),
        ];
        let cats_ok = self.categories.weights.len() == self.categories.codes.len()
            && self.categories.bias.len() == self.categories.codes.len()
            && self.categories.weights.iter().all(|w| w.len() == dim);
        if dims.iter().any(|&d| d != dim) || !cats_ok {
            return Err(GuardError::Model(format!(
                "the head does not fit the encoder: features of width {dim}, head widths {dims:?}"
            )));
        }
        Ok(())
    }
}

/// The texts the embedded guard judges. For prompts: every turn that is not the
/// assistant's (system, user, tool: everything the model reads from outside), each on its
/// own, and, when there are several, all of them together (for harm that needs the context
/// of earlier turns). Each turn on its own keeps a harmful turn from being averaged away by
/// long harmless ones around it. For responses: the last assistant turn.
pub fn judged_texts(messages: &[ChatMessage], agent: AgentType) -> Vec<String> {
    match agent {
        AgentType::User => {
            let turns: Vec<&str> = messages
                .iter()
                .filter(|m| m.role != "assistant")
                .map(|m| m.content.as_str())
                .collect();
            let mut texts: Vec<String> = turns.iter().map(|t| t.to_string()).collect();
            if turns.len() > 1 {
                texts.push(turns.join("\n\n"));
            }
            if texts.is_empty() {
                texts.push(String::new());
            }
            texts
        }
        AgentType::Agent => vec![messages
            .iter()
            .rev()
            .find(|m| m.role == "assistant")
            .map(|m| m.content.clone())
            .unwrap_or_default()],
    }
}

pub use safegate_engine::classifier::windows;

/// A text's verdict from the embedded guard.
#[derive(Debug, Clone, PartialEq)]
pub struct TextScore {
    /// P(unsafe) of the most unsafe window.
    pub p_unsafe: f64,
    /// The category distribution given unsafe, of that window (Llama Guard 2 codes).
    pub given_unsafe: Vec<(String, f64)>,
    /// Tokens read (windows overlap, so a long text counts some twice).
    pub tokens: usize,
}

struct Job {
    windows: Vec<Vec<u32>>,
    reply: mpsc::Sender<Result<Vec<Vec<f32>>, GuardError>>,
    /// When the caller stops waiting (its stage budget, or its client went away); then the
    /// work is dropped.
    until: crate::Until,
}

/// The embedded guard backend.
pub struct EmbeddedGuard {
    head: Arc<Head>,
    tokenizer: ChatTokenizer,
    /// The head's wrapper as token ids (empty sides without one).
    sides: (Vec<u32>, Vec<u32>),
    name: String,
    jobs: mpsc::SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
    /// Encoder runs and the windows they carried, since start.
    batches: Arc<BatchCounter>,
    /// Features of the windows scored last (the prompt-attack head reads the same windows
    /// the prompt head just read, so the input stage encodes each turn once).
    recent: Mutex<std::collections::VecDeque<Remembered>>,
}

/// A window (its hash, its ids) and its features.
type Remembered = (u64, Vec<u32>, Vec<f32>);

/// Windows whose features are kept for reuse.
const RECENT_WINDOWS: usize = 256;

fn window_hash(ids: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ids.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub session: SessionOptions,
    /// Classifications waiting at most (beyond: `QueueFull`).
    pub queue: usize,
    /// Windows encoded together at most.
    pub max_batch: usize,
    /// Padded positions (windows times the longest) in one encoder run at most, beyond its
    /// first window: bounds how long a short request can wait behind others' long ones.
    pub max_batch_tokens: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            session: SessionOptions::default(),
            queue: 64,
            max_batch: 16,
            max_batch_tokens: 1024,
        }
    }
}

/// Whether `dir` is an embedded guard folder (an encoder and its head).
pub fn is_embedded_guard(dir: &Path) -> bool {
    dir.join(HEAD_FILE).is_file()
}

impl EmbeddedGuard {
    pub fn open(dir: &Path, options: &EmbeddedOptions) -> Result<Self, GuardError> {
        let head = Head::load(&dir.join(HEAD_FILE))?;
        let encoder = Encoder::open(dir, &options.session)?;
        if encoder.layers() != head.layers.as_slice() {
            return Err(GuardError::Model(format!(
                "{}: the head reads layers {:?} but the encoder has {:?}",
                dir.display(),
                head.layers,
                encoder.layers()
            )));
        }
        head.check_dim(encoder.dim_for(head.pooling))?;
        // The worker owns the encoder; callers tokenize with their own copy.
        let tokenizer = ChatTokenizer::load_dir(dir)?;
        let sides = match &head.wrap {
            Some(w) => w.ids(&tokenizer)?,
            None => (Vec::new(), Vec::new()),
        };
        let pooling = head.pooling;
        let name = model_name(dir);
        let (jobs, rx) = mpsc::sync_channel::<Job>(options.queue.max(1));
        let waiting = Arc::new(AtomicUsize::new(0));
        let counter = waiting.clone();
        let max_batch = options.max_batch.max(1);
        let max_tokens = options.max_batch_tokens.max(1);
        let batches = Arc::new(BatchCounter::default());
        let worker_batches = batches.clone();
        std::thread::Builder::new()
            .name("embedded-guard".into())
            .spawn(move || {
                worker(
                    encoder,
                    pooling,
                    rx,
                    counter,
                    worker_batches,
                    (max_batch, max_tokens),
                )
            })
            .map_err(|e| GuardError::Model(format!("cannot start the guard worker: {e}")))?;
        Ok(Self {
            head: Arc::new(head),
            tokenizer,
            sides,
            name,
            jobs,
            waiting,
            batches,
            recent: Mutex::default(),
        })
    }

    /// Encoder runs so far and the windows they carried (above one per run: batching).
    pub fn batch_stats(&self) -> ScoreStats {
        self.batches.stats()
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Pooled features of each window (blocking).
    pub fn features(&self, windows: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, GuardError> {
        self.features_until(windows, &crate::Until::default())
    }

    /// Pooled features of each window, or `Timeout` once `deadline` passes: the caller
    /// stops waiting and the worker drops whatever of the job it has not encoded.
    pub fn features_until(
        &self,
        windows: Vec<Vec<u32>>,
        until: &crate::Until,
    ) -> Result<Vec<Vec<f32>>, GuardError> {
        let (tx, rx) = mpsc::channel();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            windows,
            reply: tx,
            until: until.clone(),
        };
        if let Err(e) = self.jobs.try_send(job) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(match e {
                mpsc::TrySendError::Full(_) => GuardError::Engine(EngineError::QueueFull),
                mpsc::TrySendError::Disconnected(_) => GuardError::Engine(EngineError::Stopped),
            });
        }
        if until.deadline.is_none() && until.cancelled.is_none() {
            return rx
                .recv()
                .map_err(|_| GuardError::Engine(EngineError::Stopped))?;
        }
        // Wait in slices, so that a caller who went away frees this thread too.
        const SLICE: Duration = Duration::from_millis(50);
        loop {
            let now = Instant::now();
            if until.given_up(now) {
                return Err(GuardError::Timeout(
                    "no verdict before the caller stopped waiting".into(),
                ));
            }
            let left = until
                .deadline
                .map_or(SLICE, |d| d.saturating_duration_since(now).min(SLICE));
            match rx.recv_timeout(left) {
                Ok(answer) => return answer,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(GuardError::Engine(EngineError::Stopped))
                }
            }
        }
    }

    /// Token windows of a text, as the classifier reads it whole.
    pub fn windows_of(&self, text: &str) -> Result<Vec<Vec<u32>>, GuardError> {
        let text = crate::normalize::fold_whitespace(text);
        let mut ids = self.tokenizer.encode_plain(&text)?;
        if ids.is_empty() {
            // An empty text still gets a verdict: the encoder reads one space.
            ids = self.tokenizer.encode_plain(" ")?;
        }
        Ok(self.windows_of_ids(&ids))
    }

    /// Token windows of a user's text read one sentence at a time, when the head reads
    /// sentences and the text has more than one; none otherwise (replies, tool results).
    pub fn sentence_windows_of(
        &self,
        text: &str,
        agent: AgentType,
    ) -> Result<Vec<Vec<u32>>, GuardError> {
        let (AgentType::User, Some(min_chars)) = (agent, self.head.sentence_windows) else {
            return Ok(Vec::new());
        };
        let text = crate::normalize::fold_whitespace(text);
        let sentences = crate::normalize::sentence_chunks(&text, min_chars);
        let mut out = Vec::new();
        if sentences.len() > 1 {
            for sentence in sentences {
                out.extend(self.windows_of_ids(&self.tokenizer.encode_plain(sentence)?));
            }
        }
        Ok(out)
    }

    /// Token windows of a tokenized text, each with the head's wrapper around it.
    pub fn windows_of_ids(&self, ids: &[u32]) -> Vec<Vec<u32>> {
        windows(ids, self.head.window_tokens, self.head.window_stride)
            .into_iter()
            .map(|w| wrapped(&w, &self.sides))
            .collect()
    }

    /// Scores a text judged as `agent`'s (blocking).
    pub fn classify_text(&self, text: &str, agent: AgentType) -> Result<TextScore, GuardError> {
        let text = as_judged(text, agent);
        self.score_windows_until(
            self.windows_of(&text)?,
            self.sentence_windows_of(&text, agent)?,
            agent,
            &crate::Until::default(),
        )
    }

    /// Scores token windows (what `classify_text` does after tokenizing; benchmarks call it
    /// with synthetic ids).
    pub fn score_windows(
        &self,
        windows: Vec<Vec<u32>>,
        agent: AgentType,
    ) -> Result<TextScore, GuardError> {
        self.score_windows_until(windows, Vec::new(), agent, &crate::Until::default())
    }

    /// The worst of `windows` (whole texts, read by the prompt or the response head) and
    /// `sentences` (sentences of a user's text, read by the sentence head), encoded together.
    fn score_windows_until(
        &self,
        mut windows: Vec<Vec<u32>>,
        sentences: Vec<Vec<u32>>,
        agent: AgentType,
        until: &crate::Until,
    ) -> Result<TextScore, GuardError> {
        let whole = windows.len();
        windows.extend(sentences);
        let tokens = windows.iter().map(Vec::len).sum();
        let features = self.features_until(windows.clone(), until)?;
        self.remember(&windows[..whole], &features[..whole]);
        let head = match agent {
            AgentType::User => &self.head.prompt,
            AgentType::Agent => &self.head.response,
        };
        let sentence_head = self.head.sentence.as_ref().unwrap_or(head);
        let (p, worst) = features
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let reader = if i < whole { head } else { sentence_head };
                (reader.p_unsafe(f), f)
            })
            .fold(None::<(f64, &Vec<f32>)>, |best, c| match best {
                Some(b) if b.0 >= c.0 => Some(b),
                _ => Some(c),
            })
            .ok_or_else(|| GuardError::Model("the encoder returned nothing".into()))?;
        Ok(TextScore {
            p_unsafe: p,
            given_unsafe: self.head.categories.given_unsafe(worst),
            tokens,
        })
    }

    /// P(prompt attack) of each text (the worst of its windows), when the head has an
    /// attack head. Texts are judged as a user's (the same features as the prompt head).
    pub fn attack_scores(
        &self,
        texts: &[String],
        until: &crate::Until,
    ) -> Result<Option<Vec<f64>>, GuardError> {
        let Some(head) = &self.head.attack else {
            return Ok(None);
        };
        let mut windows = Vec::new();
        let mut owner = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let w = self.windows_of(&as_judged(text, AgentType::User))?;
            owner.extend(std::iter::repeat_n(i, w.len()));
            windows.extend(w);
        }
        let mut scores = vec![0.0f64; texts.len()];
        // Windows the prompt head has just encoded are not encoded again.
        let mut features: Vec<Option<Vec<f32>>> =
            windows.iter().map(|w| self.recalled(w)).collect();
        let missing: Vec<Vec<u32>> = windows
            .iter()
            .zip(&features)
            .filter(|(_, f)| f.is_none())
            .map(|(w, _)| w.clone())
            .collect();
        if !missing.is_empty() {
            let mut computed = self.features_until(missing, until)?.into_iter();
            for f in features.iter_mut().filter(|f| f.is_none()) {
                *f = computed.next();
            }
        }
        for (f, &i) in features.iter().zip(&owner) {
            if let Some(f) = f {
                scores[i] = scores[i].max(head.p_unsafe(f));
            }
        }
        Ok(Some(scores))
    }

    fn remember(&self, windows: &[Vec<u32>], features: &[Vec<f32>]) {
        if self.head.attack.is_none() {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for (w, f) in windows.iter().zip(features) {
            recent.push_back((window_hash(w), w.clone(), f.clone()));
        }
        while recent.len() > RECENT_WINDOWS {
            recent.pop_front();
        }
    }

    fn recalled(&self, window: &[u32]) -> Option<Vec<f32>> {
        let h = window_hash(window);
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .rev()
            .find(|(hash, ids, _)| *hash == h && ids == window)
            .map(|(_, _, f)| f.clone())
    }

    pub fn classify_blocking(&self, prompt: &GuardPrompt) -> Result<Classification, GuardError> {
        self.classify_until(prompt, None)
    }

    /// [`Self::classify_blocking`], giving up (`Timeout`) at `deadline`; work not started
    /// by then is dropped rather than done for nobody.
    pub fn classify_until(
        &self,
        prompt: &GuardPrompt,
        deadline: Option<Instant>,
    ) -> Result<Classification, GuardError> {
        self.classify_for(
            prompt,
            &crate::Until {
                deadline,
                cancelled: None,
            },
        )
    }

    /// [`Self::classify_until`] for a caller that may also go away (`until.cancelled`).
    pub fn classify_for(
        &self,
        prompt: &GuardPrompt,
        until: &crate::Until,
    ) -> Result<Classification, GuardError> {
        let t0 = Instant::now();
        let mut windows = Vec::new();
        for text in judged_texts(&prompt.messages, prompt.agent) {
            windows.extend(self.windows_of(&as_judged(&text, prompt.agent))?);
        }
        // Sentences of what users wrote (not of tool results: a document's sentence out of
        // context says little, and an injected instruction is the attack head's business);
        // none for a reply.
        let mut sentences = Vec::new();
        for m in prompt.messages.iter().filter(|m| m.role == "user") {
            sentences.extend(
                self.sentence_windows_of(&as_judged(&m.content, prompt.agent), prompt.agent)?,
            );
        }
        let TextScore {
            p_unsafe,
            given_unsafe: given,
            tokens,
        } = self.score_windows_until(windows, sentences, prompt.agent, until)?;
        // Report under the prompt's category list: the taxonomy's codes it lists (the head
        // knows the Llama Guard 2 codes; custom categories get no score from it).
        let listed: Vec<(String, f64)> = prompt
            .codes
            .iter()
            .filter_map(|(_, reported)| {
                given
                    .iter()
                    .find(|(c, _)| c == reported)
                    .map(|(c, p)| (c.clone(), *p))
            })
            .collect();
        let top_category = crate::classify::top_category(&listed);
        Ok(Classification {
            verdict: Verdict {
                taxonomy: Some(self.head.taxonomy),
                p_unsafe,
                category_scores: listed.into_iter().map(|(c, p)| (c, p_unsafe * p)).collect(),
                codes: Vec::new(),
            },
            top_category,
            prompt_tokens: tokens,
            latency_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

fn model_name(dir: &Path) -> String {
    let dir: PathBuf = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "embedded-guard".into())
}

/// A classification the worker has taken in and not answered yet.
struct Pending {
    job: Job,
    results: Vec<Option<Vec<f32>>>,
    /// Windows not encoded yet, longest first: the next one taken is the last (the shortest,
    /// earliest of equals).
    todo: Vec<usize>,
    /// Arrival order (ties go to the earlier job).
    seq: u64,
}

impl Pending {
    fn new(job: Job, seq: u64) -> Self {
        let mut todo: Vec<usize> = (0..job.windows.len()).collect();
        todo.sort_by_key(|&w| std::cmp::Reverse((job.windows[w].len(), w)));
        Self {
            results: vec![None; job.windows.len()],
            todo,
            seq,
            job,
        }
    }

    /// Tokens of the windows not encoded yet: the job's remaining work.
    fn remaining(&self) -> usize {
        self.todo.iter().map(|&w| self.job.windows[w].len()).sum()
    }

    /// Scheduling order (smaller first): callers with a deadline they can still meet, least
    /// slack first (the time left minus the time their remaining work needs at `rate`
    /// tokens/s, in microseconds); then callers without a deadline, least work left first;
    /// then callers that cannot make their deadline any more (they are answered `Timeout`
    /// when it passes). Ties go to the earlier arrival.
    fn order_key(&self, now: Instant, rate: f64) -> (u8, u64, usize, u64) {
        let remaining = self.remaining();
        let need = remaining as f64 / rate.max(1.0);
        match self.job.until.deadline {
            Some(d) => {
                let slack = d.saturating_duration_since(now).as_secs_f64() - need;
                if slack >= 0.0 {
                    (0, (slack * 1e6) as u64, remaining, self.seq)
                } else {
                    (2, 0, remaining, self.seq)
                }
            }
            None => (1, 0, remaining, self.seq),
        }
    }

    /// Sends the caller its answer (it may have stopped listening).
    fn answer(self, waiting: &AtomicUsize, result: Result<Vec<Vec<f32>>, GuardError>) {
        waiting.fetch_sub(1, Ordering::SeqCst);
        let _ = self.job.reply.send(result);
    }
}

/// Picks the next batch: whole windows of the jobs first in [`Pending::order_key`] order, at
/// most `max_batch` windows and, beyond the first window, `max_tokens` padded positions
/// (so one run stays short and whoever is next waits for one run at most). Returns (job
/// index, window index) pairs.
fn next_batch(
    pending: &mut [Pending],
    (max_batch, max_tokens): (usize, usize),
    now: Instant,
    rate: f64,
) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_by_cached_key(|&j| pending[j].order_key(now, rate));
    let mut batch: Vec<(usize, usize)> = Vec::new();
    let mut longest = 0;
    'jobs: for j in order {
        while let Some(&w) = pending[j].todo.last() {
            let len = pending[j].job.windows[w].len();
            let padded = longest.max(len) * (batch.len() + 1);
            if !batch.is_empty() && (batch.len() >= max_batch || padded > max_tokens) {
                break 'jobs;
            }
            longest = longest.max(len);
            pending[j].todo.pop();
            batch.push((j, w));
        }
    }
    batch
}

/// Takes in what waits, encodes the next batch (see [`next_batch`]), answers the jobs that
/// are complete, and repeats. Jobs whose caller stopped waiting are dropped unencoded.
fn worker(
    mut encoder: Encoder,
    pooling: Pooling,
    rx: mpsc::Receiver<Job>,
    waiting: Arc<AtomicUsize>,
    batches: Arc<BatchCounter>,
    (max_batch, max_tokens): (usize, usize),
) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut seq = 0u64;
    // Encoder speed in tokens/s (padded positions), a running estimate for the slack.
    let mut rate = 1000.0f64;
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(job) => {
                    seq += 1;
                    pending.push(Pending::new(job, seq));
                }
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            seq += 1;
            pending.push(Pending::new(job, seq));
        }
        // A caller that gave up (its deadline passed, or it went away) gets no more encoder
        // time; jobs encoded in full are answered.
        let now = Instant::now();
        for p in take_where(&mut pending, |p| p.job.until.given_up(now)) {
            p.answer(
                &waiting,
                Err(GuardError::Timeout(
                    "the caller's time ran out before the guard got to it".into(),
                )),
            );
        }
        if pending.is_empty() {
            continue;
        }
        let batch = next_batch(&mut pending, (max_batch, max_tokens), now, rate);
        let windows: Vec<Vec<u32>> = batch
            .iter()
            .map(|&(j, w)| pending[j].job.windows[w].clone())
            .collect();
        let started = Instant::now();
        match encoder.pooled_by(&windows, pooling) {
            Ok(vectors) => {
                let padded = windows.iter().map(Vec::len).max().unwrap_or(0) * windows.len();
                let seconds = started.elapsed().as_secs_f64().max(1e-6);
                rate = 0.8 * rate + 0.2 * (padded as f64 / seconds);
                batches.record(windows.len());
                for (&(j, w), v) in batch.iter().zip(vectors) {
                    pending[j].results[w] = Some(v);
                }
                for mut p in take_where(&mut pending, |p| p.todo.is_empty()) {
                    let vectors = std::mem::take(&mut p.results)
                        .into_iter()
                        .map(Option::unwrap_or_default)
                        .collect();
                    p.answer(&waiting, Ok(vectors));
                }
            }
            Err(e) => {
                // The encoder failed: every job in this batch fails (the others go on).
                let in_batch: Vec<u64> = batch.iter().map(|&(j, _)| pending[j].seq).collect();
                for p in take_where(&mut pending, |p| in_batch.contains(&p.seq)) {
                    p.answer(&waiting, Err(GuardError::Model(e.to_string())));
                }
            }
        }
    }
}

/// Removes and returns the jobs for which `done` holds, keeping the others in order.
fn take_where(pending: &mut Vec<Pending>, done: impl Fn(&Pending) -> bool) -> Vec<Pending> {
    let (taken, kept): (Vec<Pending>, Vec<Pending>) =
        std::mem::take(pending).into_iter().partition(|p| done(p));
    *pending = kept;
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_token_and_end_at_the_end() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(windows(&ids, 16, 8), vec![ids.clone()]);
        let w = windows(&ids, 4, 3);
        assert_eq!(w.first().unwrap(), &vec![0, 1, 2, 3]);
        assert_eq!(w.last().unwrap(), &vec![6, 7, 8, 9]);
        for t in 0..10 {
            assert!(w.iter().any(|win| win.contains(&t)), "token {t} missing");
        }
        assert!(w.iter().all(|win| win.len() == 4));
    }

    #[test]
    fn judged_texts_take_the_right_turns() {
        let m = vec![
            ChatMessage::new("system", "be nice"),
            ChatMessage::new("user", "first"),
            ChatMessage::new("assistant", "reply one"),
            ChatMessage::new("tool", "tool output"),
            ChatMessage::new("assistant", "reply two"),
        ];
        assert_eq!(
            judged_texts(&m, AgentType::User),
            vec![
                "be nice",
                "first",
                "tool output",
                "be nice\n\nfirst\n\ntool output"
            ]
        );
        assert_eq!(judged_texts(&m, AgentType::Agent), vec!["reply two"]);
        assert_eq!(judged_texts(&m[1..2], AgentType::User), vec!["first"]);
    }

    fn job(lens: &[usize], deadline: Option<Instant>, seq: u64) -> Pending {
        let (reply, _) = mpsc::channel();
        Pending::new(
            Job {
                windows: lens.iter().map(|&n| vec![1u32; n]).collect(),
                reply,
                until: crate::Until {
                    deadline,
                    cancelled: None,
                },
            },
            seq,
        )
    }

    fn pending(lens: &[usize]) -> Pending {
        job(lens, None, 0)
    }

    #[test]
    fn short_requests_go_first_and_batches_stay_bounded() {
        // A long request (10 windows of 256) queued before a short one (1 window of 12).
        let mut jobs = vec![pending(&[256; 10]), pending(&[12])];
        let now = Instant::now();
        let first = next_batch(&mut jobs, (16, 1024), now, 1000.0);
        assert_eq!(
            first[0],
            (1, 0),
            "the short request is served in the first batch"
        );
        // 4 rows x 256 padded positions fit 1024; a fifth would not.
        assert_eq!(first.len(), 4);
        assert!(jobs[1].todo.is_empty());
        assert_eq!(jobs[0].todo.len(), 7);
        assert_eq!(jobs[0].remaining(), 7 * 256);
        // One window always goes, whatever the token budget.
        let mut one = vec![pending(&[300])];
        assert_eq!(next_batch(&mut one, (16, 64), now, 1000.0), vec![(0, 0)]);
        // The window count bound holds for many tiny windows.
        let mut tiny = vec![pending(&[3; 40])];
        assert_eq!(next_batch(&mut tiny, (16, 1024), now, 1000.0).len(), 16);
    }

    #[test]
    fn callers_closest_to_their_deadline_go_first_and_lost_causes_last() {
        let now = Instant::now();
        let secs = |s: f64| Some(now + Duration::from_secs_f64(s));
        // At 1,000 tokens/s: a long job (2,560 tokens, 2.56 s of work) due in 5 s has 2.44 s
        // of slack; a short one (12 tokens) due in 5 s has 4.99 s: the long one goes first.
        let mut jobs = vec![job(&[12], secs(5.0), 2), job(&[256; 10], secs(5.0), 1)];
        assert_eq!(next_batch(&mut jobs, (16, 256), now, 1000.0)[0], (1, 0));
        // A short job due in 0.1 s beats a long one due in 5 s.
        let mut jobs = vec![job(&[256; 10], secs(5.0), 1), job(&[12], secs(0.1), 2)];
        assert_eq!(next_batch(&mut jobs, (16, 256), now, 1000.0)[0], (1, 0));
        // A job that cannot finish before its deadline waits behind everyone else, callers
        // without a deadline included.
        let mut jobs = vec![job(&[256; 10], secs(1.0), 1), job(&[12], None, 2)];
        assert_eq!(next_batch(&mut jobs, (16, 256), now, 1000.0)[0], (1, 0));
        // Without deadlines: least work first, then arrival (equal jobs are served in turn,
        // not by whichever a swap left in front).
        let mut jobs = vec![
            job(&[256; 4], None, 3),
            job(&[256; 4], None, 2),
            job(&[30], None, 4),
        ];
        let order: Vec<usize> = next_batch(&mut jobs, (16, 4096), now, 1000.0)
            .into_iter()
            .map(|(j, _)| j)
            .collect();
        assert_eq!(order, vec![2, 1, 1, 1, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn a_job_takes_its_windows_shortest_first() {
        let mut jobs = vec![pending(&[50, 10, 30])];
        let batch = next_batch(&mut jobs, (16, 4096), Instant::now(), 1000.0);
        assert_eq!(batch, vec![(0, 1), (0, 2), (0, 0)]);
        assert_eq!(jobs[0].remaining(), 0);
    }

    #[test]
    fn linear_head_is_a_standardized_logistic() {
        let head = LinearHead {
            standardizer: Standardizer {
                mean: vec![1.0, 0.0],
                scale: vec![2.0, 1.0],
            },
            weights: vec![2.0, 0.0],
            bias: -1.0,
            threshold: 0.5,
        };
        // (3 - 1) / 2 * 2 - 1 = 1
        assert!((head.p_unsafe(&[3.0, 9.0]) - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-9);
    }
}
