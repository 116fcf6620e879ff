//! The engine: worker threads that each own an ONNX Runtime session, fed by one bounded
//! queue. The async side submits work and reads events from a channel; it never blocks on
//! inference. A worker interleaves its active sequences one decode step at a time, each with
//! its own KV cache, so concurrent requests make progress together and each gets exactly the
//! tokens it would get alone.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::chat::ChatTokenizer;
use crate::error::{EngineError, Result};
use crate::model::{Layout, ModelConfig, ModelFiles};
use crate::sampling::{Sampler, SamplingParams};
use crate::session::{DecoderSession, Device, KvCache, Provider, SessionOptions};
use crate::text::{IncrementalDecoder, StopMatcher};

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub device: Device,
    /// ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime choose.
    pub intra_threads: usize,
    /// Worker threads, each with its own session (memory grows with each).
    pub workers: usize,
    /// Requests waiting for a worker; beyond it `generate` fails with `QueueFull`.
    pub queue_capacity: usize,
    /// Sequences a worker interleaves at once.
    pub max_active_per_worker: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            intra_threads: 0,
            workers: 1,
            queue_capacity: 64,
            max_active_per_worker: 8,
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
    cancel: Arc<AtomicBool>,
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
        self.cancel.store(true, Ordering::Relaxed);
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
    pub config: ModelConfig,
}

enum Job {
    Generate {
        request: GenerateRequest,
        events: mpsc::UnboundedSender<GenerationEvent>,
        cancel: Arc<AtomicBool>,
        submitted: Instant,
    },
    Score {
        prompt_ids: Vec<u32>,
        continuation: Vec<u32>,
        reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
    },
}

struct Shared {
    tokenizer: Arc<ChatTokenizer>,
    queued: AtomicUsize,
}

/// A loaded model with its workers. Cheap to clone; the workers stop when the last clone is
/// dropped.
#[derive(Clone)]
pub struct Engine {
    jobs: crossbeam_channel::Sender<Job>,
    shared: Arc<Shared>,
    info: Arc<ModelInfo>,
    _workers: Arc<Workers>,
}

struct Workers(Mutex<Vec<JoinHandle<()>>>);

impl Drop for Workers {
    fn drop(&mut self) {
        // The job channel closes when the last Engine clone is gone; workers then finish their
        // active sequences' current step and exit. Joining here would deadlock if the last
        // clone were dropped on a worker, so threads are detached.
        self.0.lock().map(|mut v| v.clear()).ok();
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
            config,
        });
        let (tx, rx) = crossbeam_channel::bounded(opts.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            tokenizer,
            queued: AtomicUsize::new(0),
        });
        let mut handles = Vec::new();
        for (i, session) in sessions.into_iter().enumerate() {
            let worker = Worker {
                session,
                rx: rx.clone(),
                shared: shared.clone(),
                info: info.clone(),
                max_active: opts.max_active_per_worker.max(1),
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
        let context = self.info.config.context_length;
        if req.prompt_ids.len() + req.max_tokens > context {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: req.prompt_ids.len(),
                max_tokens: req.max_tokens,
                context,
            });
        }
        let vocab = self.info.config.vocab_size as u32;
        if let Some(bad) = req.prompt_ids.iter().find(|&&id| id >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
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
        let cancel = Arc::new(AtomicBool::new(false));
        self.submit(Job::Generate {
            request,
            events,
            cancel: cancel.clone(),
            submitted: Instant::now(),
        })?;
        Ok(TokenStream { rx, cancel })
    }

    fn submit_score(
        &self,
        prompt_ids: Vec<u32>,
        continuation: Vec<u32>,
    ) -> Result<oneshot::Receiver<Result<Vec<Vec<f32>>>>> {
        self.check_request(&GenerateRequest {
            prompt_ids: prompt_ids.clone(),
            max_tokens: continuation.len().max(1),
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
        })?;
        let vocab = self.info.config.vocab_size as u32;
        if let Some(bad) = continuation.iter().find(|&&id| id >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Score {
            prompt_ids,
            continuation,
            reply,
        })?;
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
    /// turn: one prefill and one decode step per continuation token, on one KV cache
    /// (`continuation.len() + 1` results). For scoring a given continuation.
    pub async fn score_steps(
        &self,
        prompt_ids: Vec<u32>,
        continuation: Vec<u32>,
    ) -> Result<Vec<Vec<f32>>> {
        self.submit_score(prompt_ids, continuation)?
            .await
            .map_err(|_| EngineError::Stopped)?
    }

    /// [`Self::score_steps`] for synchronous callers (not inside an async runtime).
    pub fn score_steps_blocking(
        &self,
        prompt_ids: Vec<u32>,
        continuation: Vec<u32>,
    ) -> Result<Vec<Vec<f32>>> {
        self.submit_score(prompt_ids, continuation)?
            .blocking_recv()
            .map_err(|_| EngineError::Stopped)?
    }
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
    cancel: Arc<AtomicBool>,
    submitted: Instant,
    started: Instant,
    first_token: Option<Instant>,
}

impl Active {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }
}

struct Worker {
    session: DecoderSession,
    rx: crossbeam_channel::Receiver<Job>,
    shared: Arc<Shared>,
    info: Arc<ModelInfo>,
    max_active: usize,
}

enum StepOutcome {
    Continue,
    Finished,
}

impl Worker {
    fn run(mut self) {
        let mut active: VecDeque<Active> = VecDeque::new();
        loop {
            if active.is_empty() {
                match self.rx.recv() {
                    Ok(job) => self.admit(job, &mut active),
                    Err(_) => return,
                }
            }
            while active.len() < self.max_active {
                match self.rx.try_recv() {
                    Ok(job) => self.admit(job, &mut active),
                    Err(_) => break,
                }
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

    fn admit(&mut self, job: Job, active: &mut VecDeque<Active>) {
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        match job {
            Job::Score {
                prompt_ids,
                continuation,
                reply,
            } => {
                let mut run = || -> Result<Vec<Vec<f32>>> {
                    let mut out = Vec::with_capacity(continuation.len() + 1);
                    let (mut cache, logits) = self.session.forward_with(
                        &prompt_ids,
                        self.session.empty_cache()?,
                        |l| l.to_vec(),
                    )?;
                    out.push(logits);
                    for &t in &continuation {
                        let (next, logits) =
                            self.session.forward_with(&[t], cache, |l| l.to_vec())?;
                        cache = next;
                        out.push(logits);
                    }
                    Ok(out)
                };
                let _ = reply.send(run());
            }
            Job::Generate {
                request,
                events,
                cancel,
                submitted,
            } => {
                let cache = match self.session.empty_cache() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = events.send(GenerationEvent::Error(e));
                        return;
                    }
                };
                active.push_back(Active {
                    cache: Some(cache),
                    prompt_tokens: request.prompt_ids.len(),
                    seen: request.prompt_ids.clone(),
                    next_input: request.prompt_ids,
                    generated: 0,
                    max_tokens: request.max_tokens,
                    ignore_eos: request.ignore_eos,
                    sampler: Sampler::new(request.sampling),
                    decoder: IncrementalDecoder::default(),
                    stops: StopMatcher::new(request.stop),
                    events,
                    cancel,
                    submitted,
                    started: Instant::now(),
                    first_token: None,
                });
            }
        }
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
