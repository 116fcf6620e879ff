//! The engine: worker threads that each own an ONNX Runtime session, fed by one bounded
//! queue. The async side submits work and reads events from a channel; it never blocks on
//! inference. A worker interleaves its active sequences one decode step at a time, each with
//! its own KV cache, so concurrent requests make progress together and each gets exactly the
//! tokens it would get alone.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::chat::ChatTokenizer;
use crate::error::{EngineError, Result};
use crate::model::{Layout, ModelConfig, ModelFiles};
use crate::sampling::{Sampler, SamplingParams};
use crate::session::{DecoderSession, Device, IoBindingMode, KvCache, Provider, SessionOptions};
use crate::text::{IncrementalDecoder, StopMatcher};

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub device: Device,
    /// ONNX Runtime I/O binding (KV cache kept on the provider's device); `auto` binds on CUDA,
    /// and on the CPU where the graph lets each layer's KV cache be one shared buffer.
    pub io_binding: IoBindingMode,
    /// Growing KV tensors even where a shared buffer per layer is possible (measurement).
    pub growing_kv: bool,
    /// ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime choose.
    pub intra_threads: usize,
    /// Worker threads, each with its own session (memory grows with each).
    pub workers: usize,
    /// Requests waiting for a worker; beyond it `generate` fails with `QueueFull`.
    pub queue_capacity: usize,
    /// Sequences a worker interleaves at once.
    pub max_active_per_worker: usize,
    /// Scoring requests (guard classifications) waiting together are run as one padded
    /// prefill of at most this many sequences; 1 runs them one at a time; 0 chooses by
    /// provider: 8 on CUDA, 1 on the CPU, where batching was measured to give no more
    /// throughput and a worse p99 (docs/benchmarks.md).
    pub score_batch: usize,
    /// ... and at most this many positions in all (rows times the longest row): the logits
    /// of every position come back, vocabulary-wide, so this bounds the memory of a batch.
    /// A longer sequence still runs, alone.
    pub score_batch_tokens: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            io_binding: IoBindingMode::Auto,
            growing_kv: false,
            intra_threads: 0,
            workers: 1,
            queue_capacity: 64,
            max_active_per_worker: 8,
            score_batch: 0,
            score_batch_tokens: 4096,
        }
    }
}

/// A validated generation request on already-tokenized input.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks want a fixed length).
    pub ignore_eos: bool,
    /// A grammar the reply must follow (structured output), or None for free text.
    pub format: Option<Arc<safegate_structured::Grammar>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the model's context was reached.
    Length,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// Text released only at the end (held back for a possible stop string or an
    /// incomplete character); append it to the tokens' text.
    pub tail_text: String,
    /// From submission to the first token, queue wait included.
    pub time_to_first_token: Duration,
    pub queue_time: Duration,
    /// From the first token to the last.
    pub decode_time: Duration,
}

#[derive(Debug)]
pub enum GenerationEvent {
    Token { id: u32, text: String },
    Done(Completion),
    Error(EngineError),
}

/// The events of one generation. Dropping it (or calling `cancel`) stops the work within one
/// decode step.
pub struct TokenStream {
    rx: mpsc::UnboundedReceiver<GenerationEvent>,
    control: Arc<Control>,
}

/// Shared between a generation's stream and the worker running it.
#[derive(Debug, Default)]
struct Control {
    cancel: AtomicBool,
    /// Decode steps run for this generation.
    steps: AtomicUsize,
}

impl TokenStream {
    pub async fn next(&mut self) -> Option<GenerationEvent> {
        self.rx.recv().await
    }

    /// For synchronous callers (the CLI); must not be called inside an async runtime.
    pub fn blocking_next(&mut self) -> Option<GenerationEvent> {
        self.rx.blocking_recv()
    }

    pub fn cancel(&self) {
        self.control.cancel.store(true, Ordering::Relaxed);
    }

    /// Decode steps the worker has run for this generation so far (after `cancel`, at most
    /// one more).
    pub fn steps(&self) -> usize {
        self.control.steps.load(Ordering::Relaxed)
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// What a loaded model is, for logs, `/readyz` and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub dir: PathBuf,
    pub layout: Layout,
    pub provider: Provider,
    /// Whether the sessions run through ONNX Runtime's I/O binding.
    pub io_bound: bool,
    /// Whether each sequence's KV cache is one shared past/present buffer per layer,
    /// written in place (I/O-bound GroupQueryAttention graphs).
    pub kv_shared: bool,
    /// Why `--device auto` ended on the CPU, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub config: ModelConfig,
}

enum Job {
    Generate {
        request: GenerateRequest,
        events: mpsc::UnboundedSender<GenerationEvent>,
        control: Arc<Control>,
        submitted: Instant,
    },
    Score(ScoreJob),
}

/// Sequences to score, each a prompt and a continuation: the logits after the prompt and
/// after each continuation token.
struct ScoreJob {
    rows: Vec<(Vec<u32>, Vec<u32>)>,
    reply: oneshot::Sender<Result<Vec<Vec<Vec<f32>>>>>,
}

/// Logits after the prompt and after each continuation token.
type Steps = Vec<Vec<f32>>;
type ScoreRows = Result<Vec<Steps>>;

struct Shared {
    tokenizer: Arc<ChatTokenizer>,
    queued: AtomicUsize,
    scoring: BatchCounter,
    /// Decode steps run by all workers (one per generated token of each sequence).
    decode_steps: AtomicU64,
    /// Each token's bytes, built the first time a reply is held to a grammar.
    vocabulary: std::sync::OnceLock<Arc<safegate_structured::Vocabulary>>,
}

/// What a batching model runner has done so far: model runs and the sequences they carried
/// (more rows than runs means concurrent requests were batched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ScoreStats {
    pub prefills: u64,
    pub rows: u64,
}

/// Counts model runs and their rows; shared between a runner thread and its readers.
#[derive(Debug, Default)]
pub struct BatchCounter {
    runs: AtomicU64,
    rows: AtomicU64,
}

impl BatchCounter {
    /// One model run carrying `rows` sequences.
    pub fn record(&self, rows: usize) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ScoreStats {
        ScoreStats {
            prefills: self.runs.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
        }
    }
}

/// A loaded model with its workers. Cheap to clone; the workers stop when the last clone is
/// dropped.
#[derive(Clone)]
pub struct Engine {
    /// Declared before `_workers`: fields drop in order, so the job channel has closed when
    /// the last clone's `Workers` waits for the workers to see it.
    jobs: crossbeam_channel::Sender<Job>,
    shared: Arc<Shared>,
    info: Arc<ModelInfo>,
    _workers: Arc<Workers>,
}

struct Workers(Mutex<Vec<JoinHandle<()>>>);

impl Drop for Workers {
    fn drop(&mut self) {
        // The job channel has closed (the last Engine's sender is dropped before this):
        // workers finish their active sequences and exit, dropping their sessions. They are
        // waited for, so that a process ending right after its last Engine does not run ONNX
        // Runtime's and CUDA's exit-time teardown while a worker still frees a session (on
        // CUDA that crashed at exit). A worker dropping the last clone itself is not waited
        // for (it would wait for itself).
        let handles = self.0.lock().map(|mut v| std::mem::take(&mut *v));
        let me = std::thread::current().id();
        for handle in handles.unwrap_or_default() {
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
    }
}

impl Engine {
    /// Loads a model folder and starts its workers. Errors name the folder and the problem.
    pub fn load(dir: &Path, opts: &EngineOptions) -> Result<Self> {
        let files = ModelFiles::locate(dir)?;
        let config = ModelConfig::load(dir)?;
        let tokenizer = Arc::new(ChatTokenizer::load(&files)?);
        let session_opts = SessionOptions {
            device: opts.device,
            intra_threads: opts.intra_threads,
            io_binding: opts.io_binding,
            growing_kv: opts.growing_kv,
        };
        let workers = opts.workers.max(1);
        let mut sessions = Vec::with_capacity(workers);
        for _ in 0..workers {
            sessions.push(DecoderSession::open(
                dir,
                &files.onnx,
                &config,
                &session_opts,
            )?);
        }
        let info = Arc::new(ModelInfo {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
            dir: dir.to_path_buf(),
            layout: sessions[0].layout(),
            provider: sessions[0].provider,
            io_bound: sessions[0].io_bound(),
            kv_shared: sessions[0].shares_kv(),
            fallback: crate::session::fallback_reason(opts.device, sessions[0].provider),
            config,
        });
        let (tx, rx) = crossbeam_channel::bounded(opts.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            tokenizer,
            queued: AtomicUsize::new(0),
            scoring: BatchCounter::default(),
            decode_steps: AtomicU64::new(0),
            vocabulary: std::sync::OnceLock::new(),
        });
        let score_batch = match (opts.score_batch, info.provider) {
            (0, Provider::Cuda) => 8,
            (0, _) => 1,
            (n, _) => n,
        };
        let mut handles = Vec::new();
        for (i, session) in sessions.into_iter().enumerate() {
            let worker = Worker {
                session,
                rx: rx.clone(),
                shared: shared.clone(),
                info: info.clone(),
                max_active: opts.max_active_per_worker.max(1),
                score_batch,
                score_batch_tokens: opts.score_batch_tokens.max(1),
                per_position_logits: true,
            };
            let handle = std::thread::Builder::new()
                .name(format!("safegate-engine-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| EngineError::Ort(format!("cannot start a worker thread: {e}")))?;
            handles.push(handle);
        }
        tracing::info!(
            model = %info.name,
            layout = ?info.layout,
            provider = info.provider.as_str(),
            workers,
            "model loaded"
        );
        Ok(Self {
            jobs: tx,
            shared,
            info,
            _workers: Arc::new(Workers(Mutex::new(handles))),
        })
    }

    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.shared.tokenizer
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Requests waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Decode steps run since the model was loaded (all generations).
    pub fn decode_steps(&self) -> u64 {
        self.shared.decode_steps.load(Ordering::Relaxed)
    }

    /// Scoring work done since the model was loaded.
    pub fn score_stats(&self) -> ScoreStats {
        self.shared.scoring.stats()
    }

    /// Whether a prompt of `prompt_tokens` and up to `max_tokens` new ones fit the model's
    /// context (`ContextOverflow` if not): callers can refuse a request before queuing it.
    pub fn check_fits(&self, prompt_tokens: usize, max_tokens: usize) -> Result<()> {
        let context = self.info.config.context_length;
        if prompt_tokens + max_tokens > context {
            return Err(EngineError::ContextOverflow {
                prompt_tokens,
                max_tokens,
                context,
            });
        }
        Ok(())
    }

    fn check_request(&self, req: &GenerateRequest) -> Result<()> {
        req.sampling.validate()?;
        if req.prompt_ids.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if req.max_tokens == 0 {
            return Err(EngineError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        self.check_fits(req.prompt_ids.len(), req.max_tokens)?;
        let vocab = self.info.config.vocab_size as u32;
        if let Some(bad) = req.prompt_ids.iter().find(|&&id| id >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        if let Some((bad, _)) = req.sampling.logit_bias.iter().find(|(id, _)| *id >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "logit_bias: token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        Ok(())
    }

    fn submit(&self, job: Job) -> Result<()> {
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        self.jobs.try_send(job).map_err(|e| {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            match e {
                crossbeam_channel::TrySendError::Full(_) => EngineError::QueueFull,
                crossbeam_channel::TrySendError::Disconnected(_) => EngineError::Stopped,
            }
        })
    }

    /// Queues a generation; fails at once with `QueueFull` when the queue is full.
    pub fn generate(&self, request: GenerateRequest) -> Result<TokenStream> {
        self.check_request(&request)?;
        let (events, rx) = mpsc::unbounded_channel();
        let control = Arc::new(Control::default());
        self.submit(Job::Generate {
            request,
            events,
            control: control.clone(),
            submitted: Instant::now(),
        })?;
        Ok(TokenStream { rx, control })
    }

    fn submit_score(
        &self,
        rows: Vec<(Vec<u32>, Vec<u32>)>,
    ) -> Result<oneshot::Receiver<ScoreRows>> {
        if rows.is_empty() {
            return Err(EngineError::InvalidRequest("nothing to score".into()));
        }
        let vocab = self.info.config.vocab_size as u32;
        for (prompt_ids, continuation) in &rows {
            self.check_request(&GenerateRequest {
                prompt_ids: prompt_ids.clone(),
                max_tokens: continuation.len().max(1),
                sampling: SamplingParams::default(),
                stop: Vec::new(),
                ignore_eos: false,
                format: None,
            })?;
            if let Some(bad) = continuation.iter().find(|&&id| id >= vocab) {
                return Err(EngineError::InvalidRequest(format!(
                    "token id {bad} is outside the model's vocabulary of {vocab}"
                )));
            }
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Score(ScoreJob { rows, reply }))?;
        Ok(rx)
    }

    /// Logits of the next token after `prompt_ids`: one prefill, no decode.
    pub async fn score(&self, prompt_ids: Vec<u32>) -> Result<Vec<f32>> {
        let mut steps = self.score_steps(prompt_ids, Vec::new()).await?;
        Ok(steps.swap_remove(0))
    }

    /// [`Self::score`] for synchronous callers (not inside an async runtime).
    pub fn score_blocking(&self, prompt_ids: Vec<u32>) -> Result<Vec<f32>> {
        let mut steps = self.score_steps_blocking(prompt_ids, Vec::new())?;
        Ok(steps.swap_remove(0))
    }

    /// Next-token logits after `prompt_ids`, then after each token of `continuation` in
    /// turn (`continuation.len() + 1` results): the logits of a given continuation, read
    /// from one forward pass over prompt and continuation together. Concurrent calls are
    /// batched into one padded prefill (see [`EngineOptions::score_batch`]).
    pub async fn score_steps(
        &self,
        prompt_ids: Vec<u32>,
        continuation: Vec<u32>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut rows = self
            .submit_score(vec![(prompt_ids, continuation)])?
            .await
            .map_err(|_| EngineError::Stopped)??;
        Ok(rows.swap_remove(0))
    }

    /// [`Self::score_steps`] for synchronous callers (not inside an async runtime).
    pub fn score_steps_blocking(
        &self,
        prompt_ids: Vec<u32>,
        continuation: Vec<u32>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut rows = self.score_many_blocking(vec![(prompt_ids, continuation)])?;
        Ok(rows.swap_remove(0))
    }

    /// [`Self::score_steps_blocking`] for several (prompt, continuation) pairs at once: they
    /// go to one worker together and share a padded prefill (within the batch limits).
    pub fn score_many_blocking(
        &self,
        rows: Vec<(Vec<u32>, Vec<u32>)>,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        self.submit_score(rows)?
            .blocking_recv()
            .map_err(|_| EngineError::Stopped)?
    }
}

/// A (prompt, continuation) row as one sequence, and the positions whose logits score it:
/// the prompt's last position, then each continuation token's.
fn teacher_forced((prompt, continuation): &(Vec<u32>, Vec<u32>)) -> (Vec<u32>, Range<usize>) {
    let mut seq = Vec::with_capacity(prompt.len() + continuation.len());
    seq.extend(prompt);
    seq.extend(continuation);
    let wanted = prompt.len() - 1..seq.len();
    (seq, wanted)
}

struct Active {
    cache: Option<KvCache>,
    next_input: Vec<u32>,
    seen: Vec<u32>,
    prompt_tokens: usize,
    generated: usize,
    max_tokens: usize,
    ignore_eos: bool,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    events: mpsc::UnboundedSender<GenerationEvent>,
    control: Arc<Control>,
    submitted: Instant,
    started: Instant,
    first_token: Option<Instant>,
}

impl Active {
    fn cancelled(&self) -> bool {
        self.control.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }
}

struct Worker {
    session: DecoderSession,
    rx: crossbeam_channel::Receiver<Job>,
    shared: Arc<Shared>,
    info: Arc<ModelInfo>,
    max_active: usize,
    score_batch: usize,
    score_batch_tokens: usize,
    /// False once the graph is seen to return last-position logits only: scoring then
    /// takes the step-by-step path.
    per_position_logits: bool,
}

enum StepOutcome {
    Continue,
    Finished,
}

impl Worker {
    fn run(mut self) {
        let mut active: VecDeque<Active> = VecDeque::new();
        let mut scores: Vec<ScoreJob> = Vec::new();
        loop {
            if active.is_empty() {
                match self.rx.recv() {
                    Ok(job) => self.admit(job, &mut active, &mut scores),
                    Err(_) => return,
                }
            }
            // Take what is waiting: sequences up to the interleaving limit, scoring requests
            // up to one batch.
            while active.len() < self.max_active
                && scores.iter().map(|j| j.rows.len()).sum::<usize>() < self.score_batch
            {
                match self.rx.try_recv() {
                    Ok(job) => self.admit(job, &mut active, &mut scores),
                    Err(_) => break,
                }
            }
            if !scores.is_empty() {
                self.run_scores(std::mem::take(&mut scores));
            }
            for _ in 0..active.len() {
                let Some(mut seq) = active.pop_front() else {
                    break;
                };
                match self.step(&mut seq) {
                    Ok(StepOutcome::Continue) => active.push_back(seq),
                    Ok(StepOutcome::Finished) => {}
                    Err(e) => {
                        let _ = seq.events.send(GenerationEvent::Error(e));
                    }
                }
            }
        }
    }

    fn admit(&mut self, job: Job, active: &mut VecDeque<Active>, scores: &mut Vec<ScoreJob>) {
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        match job {
            Job::Score(job) => scores.push(job),
            Job::Generate {
                request,
                events,
                control,
                submitted,
            } => {
                // Room for the prompt and every token it may add (admission checked that
                // this fits the context), so a shared KV buffer never has to grow.
                let positions = request.prompt_ids.len() + request.max_tokens;
                let cache = match self.session.cache_for(positions) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = events.send(GenerationEvent::Error(e));
                        return;
                    }
                };
                let sampler = self.sampler(&request);
                active.push_back(Active {
                    cache: Some(cache),
                    prompt_tokens: request.prompt_ids.len(),
                    seen: request.prompt_ids.clone(),
                    next_input: request.prompt_ids,
                    generated: 0,
                    max_tokens: request.max_tokens,
                    ignore_eos: request.ignore_eos,
                    sampler,
                    decoder: IncrementalDecoder::default(),
                    stops: StopMatcher::new(request.stop),
                    events,
                    control,
                    submitted,
                    started: Instant::now(),
                    first_token: None,
                });
            }
        }
    }

    /// The sequence's sampler, held to its grammar if it has one.
    fn sampler(&self, request: &GenerateRequest) -> Sampler {
        let sampler = Sampler::new(request.sampling.clone());
        let Some(grammar) = &request.format else {
            return sampler;
        };
        let vocabulary = self.shared.vocabulary.get_or_init(|| {
            Arc::new(safegate_structured::Vocabulary::new(
                self.shared
                    .tokenizer
                    .token_bytes(self.info.config.vocab_size),
            ))
        });
        sampler.with_constraint(safegate_structured::Constraint::new(
            grammar.clone(),
            vocabulary.clone(),
            self.info.config.eos_token_ids.clone(),
        ))
    }

    /// Scores every row of `jobs`: rows sorted by length and cut into padded batches within
    /// the limits, so that similar lengths share a batch and padding stays small.
    fn run_scores(&mut self, jobs: Vec<ScoreJob>) {
        let mut flat: Vec<(usize, usize, Vec<u32>, Range<usize>)> = Vec::new();
        let mut results: Vec<Vec<Option<Result<Steps>>>> = Vec::with_capacity(jobs.len());
        for (j, job) in jobs.iter().enumerate() {
            results.push((0..job.rows.len()).map(|_| None).collect());
            for (r, row) in job.rows.iter().enumerate() {
                let (seq, wanted) = teacher_forced(row);
                flat.push((j, r, seq, wanted));
            }
        }
        flat.sort_by_key(|row| row.2.len());
        let mut start = 0;
        while start < flat.len() {
            let mut end = start + 1;
            while end < flat.len()
                && end - start < self.score_batch
                && (end - start + 1) * flat[end].2.len() <= self.score_batch_tokens
            {
                end += 1;
            }
            let group = &flat[start..end];
            let batched = if self.per_position_logits && group.len() > 1 {
                let rows: Vec<&[u32]> = group.iter().map(|g| g.2.as_slice()).collect();
                let wanted: Vec<Range<usize>> = group.iter().map(|g| g.3.clone()).collect();
                match self.session.prefill_batch(&rows, &wanted) {
                    Ok(Some(out)) => Some(out),
                    Ok(None) => {
                        self.per_position_logits = false;
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, rows = group.len(), "batched scoring failed; scoring the rows one at a time");
                        None
                    }
                }
            } else {
                None
            };
            match batched {
                Some(out) => {
                    self.shared.scoring.record(group.len());
                    for (g, logits) in group.iter().zip(out) {
                        results[g.0][g.1] = Some(Ok(logits));
                    }
                }
                None => {
                    for g in group {
                        let one = self.score_one(&jobs[g.0].rows[g.1]);
                        results[g.0][g.1] = Some(one);
                    }
                }
            }
            start = end;
        }
        for (job, rows) in jobs.into_iter().zip(results) {
            let collected: Result<Vec<Vec<Vec<f32>>>> = rows
                .into_iter()
                .map(|r| r.expect("every row was scored"))
                .collect();
            let _ = job.reply.send(collected);
        }
    }

    /// One row alone: one pass over prompt and continuation when the graph gives the logits
    /// of every position, else a prefill and one decode step per continuation token.
    fn score_one(&mut self, row: &(Vec<u32>, Vec<u32>)) -> Result<Vec<Vec<f32>>> {
        if self.per_position_logits {
            let (seq, wanted) = teacher_forced(row);
            match self.session.prefill_batch(&[&seq], &[wanted])? {
                Some(mut out) => {
                    self.shared.scoring.record(1);
                    return Ok(out.swap_remove(0));
                }
                None => self.per_position_logits = false,
            }
        }
        let (prompt, continuation) = row;
        self.shared.scoring.record(1);
        let mut out = Vec::with_capacity(continuation.len() + 1);
        let (mut cache, logits) = self.session.forward_with(
            prompt,
            self.session.cache_for(prompt.len() + continuation.len())?,
            |l| l.to_vec(),
        )?;
        out.push(logits);
        for &t in continuation {
            let (next, logits) = self.session.forward_with(&[t], cache, |l| l.to_vec())?;
            cache = next;
            out.push(logits);
        }
        Ok(out)
    }

    /// Ends a sequence. Text still held back (an incomplete character, a possible start of a
    /// stop string) is released unless a stop string already ended it.
    fn finish(
        &self,
        seq: &mut Active,
        mut reason: FinishReason,
        by_stop_string: bool,
    ) -> Result<StepOutcome> {
        let mut tail = String::new();
        if !by_stop_string {
            let released = seq.stops.push(&seq.decoder.finish(&self.shared.tokenizer)?);
            tail = released.text;
            if released.stopped {
                reason = FinishReason::Stop;
            } else {
                tail.push_str(&seq.stops.flush());
            }
        }
        let now = Instant::now();
        let first = seq.first_token.unwrap_or(now);
        let _ = seq.events.send(GenerationEvent::Done(Completion {
            finish_reason: reason,
            usage: Usage {
                prompt_tokens: seq.prompt_tokens,
                completion_tokens: seq.generated,
            },
            tail_text: tail,
            time_to_first_token: first - seq.submitted,
            queue_time: seq.started - seq.submitted,
            decode_time: now - first,
        }));
        Ok(StepOutcome::Finished)
    }

    fn step(&mut self, seq: &mut Active) -> Result<StepOutcome> {
        if seq.cancelled() {
            return Ok(StepOutcome::Finished);
        }
        let cache = seq.cache.take().expect("an active sequence has a cache");
        let (cache, next) = self
            .session
            .forward_with(&seq.next_input, cache, |logits| {
                seq.sampler.sample(logits, &seq.seen)
            })?;
        seq.generated += 1;
        seq.control.steps.fetch_add(1, Ordering::Relaxed);
        self.shared.decode_steps.fetch_add(1, Ordering::Relaxed);
        if seq.first_token.is_none() {
            seq.first_token = Some(Instant::now());
        }
        if !seq.ignore_eos && self.info.config.eos_token_ids.contains(&next) {
            return self.finish(seq, FinishReason::Stop, false);
        }
        let piece = seq.decoder.push(next, &self.shared.tokenizer)?;
        let released = seq.stops.push(&piece);
        if seq
            .events
            .send(GenerationEvent::Token {
                id: next,
                text: released.text,
            })
            .is_err()
        {
            return Ok(StepOutcome::Finished); // the reader has gone: stop now
        }
        if released.stopped {
            return self.finish(seq, FinishReason::Stop, true);
        }
        if seq.generated >= seq.max_tokens || cache.len() + 1 > self.info.config.context_length {
            return self.finish(seq, FinishReason::Length, false);
        }
        seq.seen.push(next);
        seq.next_input.clear();
        seq.next_input.push(next);
        seq.cache = Some(cache);
        Ok(StepOutcome::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dropping the last Engine waits for its workers: when the drop returns, every worker has
    /// exited and released what it held (its session among them), so a process can end
    /// right after without racing ONNX Runtime's exit-time teardown.
    #[test]
    fn dropping_the_last_engine_waits_for_its_workers() {
        crate::runtime::init(None).expect("ONNX Runtime (run scripts/setup.sh)");
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tiny-llama3");
        let opts = EngineOptions {
            device: crate::Device::Cpu,
            intra_threads: 1,
            workers: 2,
            ..Default::default()
        };
        let engine = Engine::load(&dir, &opts).expect("fixture loads");
        let clone = engine.clone();
        let held_by_workers = Arc::downgrade(&engine.info);
        drop(engine);
        assert!(
            held_by_workers.upgrade().is_some(),
            "a clone is still alive"
        );
        drop(clone);
        assert!(
            held_by_workers.upgrade().is_none(),
            "a worker still ran after the last Engine was dropped"
        );
    }
}
